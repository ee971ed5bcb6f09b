/*
 * tail_cli — `loglet tail`: the logs API's command-line client, with the
 * flags of kubectl logs and stern. Prints `TIME namespace/pod/container LINE`
 * (text, coloured by pod and container like stern) or the API's NDJSON.
 * Returns the process exit status: 0 when the stream ended normally, 1 on an
 * error the server or the connection reported, 2 on a usage error.
 */
#ifndef LOGLET_API_TAIL_CLI_H
#define LOGLET_API_TAIL_CLI_H

int api_tail_main(int argc, char **argv);

#endif

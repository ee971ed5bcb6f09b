/* `loglet archive cat|compact` — placeholder until the reader lands. */
#include <stdio.h>

#include "archive.h"

int archive_cli_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "loglet archive: not implemented yet\n");
    return 2;
}

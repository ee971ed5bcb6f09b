"""The README's promises about itself: exactly two start commands, which work
(the demo prints live lines from a kubelet-style tree), and a settings table
that is the one the binary prints."""
import os
import re
import subprocess
import unittest

from harness import LOGLET_BIN, SOURCE_DIR

README = os.path.join(SOURCE_DIR, "README.md")


class ReadmeTest(unittest.TestCase):
    def setUp(self):
        with open(README) as f:
            self.text = f.read()

    def start_commands(self):
        section = self.text.split("## Start here", 1)[1].split("\n## ", 1)[0]
        return re.findall(r"```sh\n(.*?)```", section, re.S)

    def test_exactly_two_commands_and_ci_runs_the_second(self):
        blocks = [b.strip() for b in self.start_commands()]
        self.assertEqual(blocks, ["scripts/demo.sh", "scripts/test.sh"])
        with open(os.path.join(SOURCE_DIR, ".ci", "run")) as f:
            self.assertIn("exec scripts/test.sh", f.read())

    def test_settings_table_matches_the_binary(self):
        table = subprocess.run([LOGLET_BIN, "-config-reference"], capture_output=True, text=True, check=True).stdout
        self.assertIn(table.strip(), self.text, "README's settings table is stale: paste `loglet -config-reference`")

    def test_no_placeholders_left(self):
        for marker in ("SETTINGS_TABLE", "PERFORMANCE_SECTION", "RELIABILITY_SECTION", "TODO", "TBD"):
            self.assertNotIn(marker, self.text)

    def test_demo_command_prints_live_lines(self):
        env = dict(os.environ, DEMO_SECONDS="4", LOGLET_DEMO_PORT="0")
        r = subprocess.run([os.path.join(SOURCE_DIR, "scripts", "demo.sh")], capture_output=True, text=True,
                           env=env, timeout=600, stdin=subprocess.DEVNULL)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        lines = r.stdout.splitlines()
        rx = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z [a-z0-9.-]+/[a-z0-9.-]+/[a-z0-9-]+ (stdout|stderr) .+")
        self.assertTrue(lines and all(rx.match(l) for l in lines), r.stdout[:2000])
        pods = {l.split(" ")[1] for l in lines}
        self.assertIn("shop/web-0/app", pods)
        self.assertIn("shop/db-0/postgres", pods)
        self.assertIn("monitoring/node-exporter-x7k2p/exporter", pods)  # created while running
        self.assertGreaterEqual(sum("GET /api/items/" in l for l in lines), 5)  # appended live


if __name__ == "__main__":
    unittest.main(verbosity=2)

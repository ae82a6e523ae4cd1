"""Prints the slowest tests of a pytest JUnit XML report: `python .ci/slowest_tests.py REPORT [N]`."""

import sys
import xml.etree.ElementTree as ElementTree


def main(path: str, count: int = 30) -> None:
    cases = ElementTree.parse(path).getroot().iter("testcase")
    timed = sorted(((float(c.get("time", 0)), f"{c.get('classname')}::{c.get('name')}") for c in cases), reverse=True)
    print(f"slowest {min(count, len(timed))} of {len(timed)} tests ({sum(t for t, _ in timed):.0f} s in all):")
    for seconds, name in timed[:count]:
        print(f"{seconds:8.1f} s  {name}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))

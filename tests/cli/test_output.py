"""Progress bars on a terminal, plain lines elsewhere; values shown readably and as JSON."""

from __future__ import annotations

import io

from atoll.cli.output import ProgressBar, format_value, jsonable
from atoll.inspection import Instance, Reference
from atoll.progress import ProgressStep


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_bar_with_counts_rate_and_time_left():
    out = Terminal()
    bar = ProgressBar(out)
    bar(ProgressStep("copying", 0, 1000, "transactions"))
    bar._started -= 2.0  # two seconds in
    bar(ProgressStep("copying", 500, 1000, "transactions"))
    bar(ProgressStep("copying", 1000, 1000, "transactions", finished=True))
    text = out.getvalue()
    assert "\r" in text and "[" + "#" * 15 in text
    assert "500/1,000 transactions" in text and "/s" in text and "left" in text
    assert "done in" in text and text.endswith("\n")


def test_elsewhere_plain_lines_and_the_operations_own_summary():
    out = io.StringIO()
    bar = ProgressBar(out)
    bar(ProgressStep("packing", 10, None, "objects"))
    bar(ProgressStep("packing", 20, 20, "objects", finished=True, text="packed a.db: removed 3 objects"))
    bar("a plain line")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("packing  10 objects")
    assert lines[1].startswith("packing  20/20 objects") and "done in" in lines[1]
    assert lines[2] == "packed a.db: removed 3 objects"
    assert lines[3] == "a plain line"


def test_values_readable_and_json():
    ref = Reference(b"\0" * 7 + b"\x05", "orders", "app.Order")
    thing = Instance("app.Thing", ())
    thing.state = {"order": ref, "raw": b"\x01"}
    assert format_value(thing) == "app.Thing(state={'order': <orders:0x0000000000000005 app.Order>, 'raw': b'\\x01'})"
    assert jsonable(thing) == {
        "$class": "app.Thing",
        "state": {"order": {"$ref": "orders:0x0000000000000005", "class": "app.Order"}, "raw": {"$bytes": "01"}},
    }
    assert jsonable({1: "a"}) == {"$pairs": [[1, "a"]]}

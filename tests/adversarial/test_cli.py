"""Both CLIs refuse bad input with one clear message, their exit code and no leftovers (the
cases and how they run: cli_cases.py)."""

from __future__ import annotations

import re

import pytest
from cli_cases import CASES


@pytest.mark.parametrize("case", list(CASES))
def test_cli_bad_input_exits_with_a_clear_message(cli_results, case):
    code, err, leftovers = cli_results[case]
    _, _, want_code, pattern = CASES[case]
    assert code == want_code, (code, err[-2000:])
    assert re.search(pattern, err, re.MULTILINE), err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    ours = [name for name in leftovers if name.startswith("musar")]
    assert ours == [], ours  # no temporary base folder left behind (torch's own caches may stay)

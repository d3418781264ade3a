"""Write docs/BAD_INPUTS.md from the messages the bad-input tests actually printed.

    GALSPEC_BAD_INPUTS_LOG=/tmp/bad.jsonl .venv/bin/python -m pytest tests/test_bad_inputs.py -q
    .venv/bin/python scripts/bad_inputs_doc.py /tmp/bad.jsonl docs/BAD_INPUTS.md

Temporary directories in the messages are shortened to ``<tmp>/``.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = {"contrastive": "train_contrastive.py", "generative": "train_generative.py",
       "baseline": "train_baseline.py", "generate": "generate.py", "evaluate": "evaluate.py",
       "make_mock": "python -m surveys.mock.make", "sdss": "python -m surveys.sdss"}
TMP = re.compile(r"(/private)?/tmp/pytest-of-[^/]+/pytest-\d+/[^/ ]+?\d*/(case/)?")

HEAD = """# Bad inputs: what each CLI says

Every row is a case of `tests/test_bad_inputs.py`, which runs the CLI (in-process `main(argv)`; the rows
marked *process* as a real subprocess of the script) and asserts: exit status 2, exactly one stderr line
`error: ...` containing the file/field/value shown, no traceback, and no file created, removed or changed
in the case's directory or in the shared fixtures (survey, checkpoints, results, half-finished generation
parts). The messages below are the ones the test run printed (`scripts/bad_inputs_doc.py` writes this page
from `GALSPEC_BAD_INPUTS_LOG`; temporary directories shortened to `<tmp>/`).

Related behaviour that is not an error (tested in the same file):
- NaN/inf flux or ivar pixels in a survey are masked (ivar = 0) by
  `datasets.preprocess.preprocess_spectra` instead of raising a scipy traceback; a spectrum with no finite
  pixel is dropped by the positive-flux filter.
- a galaxy whose image has NaN/inf pixels or a constant band is flagged in generate.py's `status` column and
  gets no spectrum; the rest complete.
- `--overwrite` (generate.py, evaluate.py, make_mock, and `surveys.sdss` build, import-pasquet,
  results-to-fits, catalog) replaces an existing output; for generate.py it also discards the parts of
  a different run. Parts of the same run (same checkpoint sha256, input catalogue fingerprint and
  settings) are resumed without it.

"""


def main(log: str, out: str) -> None:
    rows = [json.loads(ln) for ln in Path(log).read_text().splitlines() if ln.strip()]
    seen, uniq = set(), []
    for r in rows:
        if r["id"] not in seen:
            seen.add(r["id"])
            uniq.append(r)
    lines = [HEAD, f"{len(uniq)} cases.\n", "| # | CLI | bad input | one-line error (exit 2) |",
             "| --- | --- | --- | --- |"]
    for i, r in enumerate(uniq, 1):
        msg = TMP.sub("<tmp>/", r["error"]).replace(str(ROOT) + "/", "").replace("|", "\\|")
        cli = CLI[r["cli"]] + (" (*process*)" if r["subprocess"] else "")
        lines.append(f"| {i} | `{cli}` | {r['input'].replace('|', '/')} | `{msg}` |")
    Path(out).write_text("\n".join(lines) + "\n")
    print(f"{out}: {len(uniq)} cases")


if __name__ == "__main__":
    main(*sys.argv[1:3])

"""Progress bars inside a kernel run by plain papermill: the text bar's stream is saved in the notebook, so it must
draw a bounded number of times however many steps (and however fast or slow they are)."""
from __future__ import annotations

import io

import nbformat
import papermill

from histokit.progress import MODE_VARIABLE, BoundedTqdm
from notebook_helpers import write_stage_notebook

STEPS = 5000


def _draws(bar_kwargs, steps=STEPS):
    out = io.StringIO()
    bar = BoundedTqdm(file=out, mininterval=0, miniters=1, **bar_kwargs)  # tqdm itself would draw every step
    for i in range(steps):
        bar.update(1)
        bar.set_postfix(loss=f"{i / 7:.4f}")
    bar.close()
    return out.getvalue().count("\r")


def test_bounded_bar_draws_at_milestones_not_per_step():
    # first draw + 20 milestones + the closing clear (+ at most one time mark if this machine took a minute)
    assert _draws({"total": STEPS}) <= BoundedTqdm.MILESTONES + 4
    # no total: a draw at counts 1, 2, 4, ...: log2(5000) ~ 13
    assert _draws({}) <= STEPS.bit_length() + 4
    assert _draws({"total": STEPS}) >= BoundedTqdm.MILESTONES  # it still shows progress


BODY = f"""
from histokit.progress import progress_bar
bar = progress_bar(total={STEPS}, desc="epoch 1/1", mininterval=0, miniters=1, leave=True)
for i in range({STEPS}):
    bar.update(1)
    bar.set_postfix(loss=f"{{i / 7:.4f}}", lr=f"{{1e-3 / (i + 1):.2e}}")
bar.close()
for _ in progress_bar(range({STEPS}), desc="extract features", mininterval=0, miniters=1):
    pass
for _ in progress_bar(iter(range({STEPS})), desc="no total", mininterval=0, miniters=1):
    pass
"""


def test_a_long_loop_under_plain_papermill_leaves_a_small_notebook(tmp_path, monkeypatch):
    monkeypatch.delenv(MODE_VARIABLE, raising=False)  # what a user running papermill by hand has
    nb, out = tmp_path / "long.ipynb", tmp_path / "long.out.ipynb"
    write_stage_notebook(nb, BODY, parameters="x = 1")
    papermill.execute_notebook(str(nb), str(out), kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    text = "".join(o.get("text", "") for c in nbformat.read(out, as_version=4).cells for o in c.get("outputs", []))
    assert "epoch 1/1" in text and f"{STEPS}/{STEPS}" in text  # the bar did reach the notebook
    # 3 bars x ~25 draws of ~150 characters; one draw per step would be ~1.5 MB
    assert text.count("\r") <= 3 * (BoundedTqdm.MILESTONES + 5)
    assert out.stat().st_size < 50_000

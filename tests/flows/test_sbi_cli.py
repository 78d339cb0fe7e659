"""``odeflow sbi train|sample|list`` end to end on tiny runs, presets and the corner plot
(writes only into tmp_path)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from odeflow.cli import main
from odeflow.flows import COTFlow, OTFlow, PCPMap, save_checkpoint
from odeflow.flows._sbi_plot import plot_corner, sbibm_reference
from odeflow.flows._sbi_presets import SBI_PRESETS, build_sbi_model, get_sbi_preset

_TRAIN = ["sbi", "train", "--task", "two_moons", "--simulations", "200", "--iters", "4",
          "--width", "8", "--n-plot", "50", "--quiet"]  # fmt: skip


@pytest.mark.parametrize("method", ["pcp-map", "cotflow"])
def test_sbi_train_sample(tmp_path, capsys, method):
    out = tmp_path / "run"
    assert main([*_TRAIN, "--method", method, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["iterations"] == 4 and m["dropped"] == 0 and np.isfinite(m["best_val_nll"])
    assert m["config"]["width"] == 8 and m["method"] == method.replace("-", "")
    assert (out / "posterior.png").stat().st_size > 1000
    # the same run again is refused without --overwrite, accepted with it
    capsys.readouterr()
    assert main([*_TRAIN, "--method", method, "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    obs = tmp_path / "obs.csv"
    np.savetxt(obs, [[0.1, 0.2], [0.0, -0.1]], delimiter=",")
    ck = str(out / "model.pt")
    assert main(["sbi", "sample", "--checkpoint", ck, "--observation", str(obs), "-n", "30",
                 "--out", str(tmp_path / "s.npy")]) == 0  # fmt: skip
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (2, 30, 2) and np.isfinite(s).all()
    # the samples are the model's: the same seed gives the same draws as the library
    model = (COTFlow if method == "cotflow" else PCPMap).load(ck)
    torch.manual_seed(0)
    ref = model(torch.tensor([[0.1, 0.2], [0.0, -0.1]])).sample((30,)).transpose(0, 1)
    np.testing.assert_allclose(s, ref.numpy(), rtol=1e-5, atol=1e-5)


def test_sbi_sample_refuses_bad_input(tmp_path, capsys):
    model = PCPMap(2, 2, width=4)
    ck = tmp_path / "m.pt"
    model.save(ck)
    wide = tmp_path / "wide.csv"
    np.savetxt(wide, [[0.1, 0.2, 0.3]], delimiter=",")
    assert main(["sbi", "sample", "--checkpoint", str(ck), "--observation", str(wide),
                 "--out", str(tmp_path / "s.npy")]) == 1  # fmt: skip
    assert "rows of 2 values" in capsys.readouterr().err
    ot = tmp_path / "flow.pt"
    save_checkpoint(OTFlow(2, width=4), ot)
    assert main(["sbi", "sample", "--checkpoint", str(ot), "--observation", str(wide)]) == 1
    assert "not a COT-Flow or PCP-Map checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: unknown method
        main(["sbi", "train", "--task", "two_moons", "--method", "npe", "--out", "x"])


def test_sbi_list_and_presets(capsys):
    assert main(["sbi", "list"]) == 0
    text = capsys.readouterr().out
    assert "lotka_volterra_ssa" in text and "two_moons" in text
    assert {m for _, m in SBI_PRESETS} == {"cotflow", "pcpmap"}
    p = get_sbi_preset("slcp", "pcp-map")
    assert p.method == "pcpmap" and p.fit["iters"] > 0
    with pytest.raises(TypeError):
        p.fit["iters"] = 1  # presets are read-only data
    with pytest.raises(ValueError, match="valid methods"):
        get_sbi_preset("slcp", "npe")
    with pytest.raises(ValueError, match="valid tasks"):
        get_sbi_preset("mnist", "pcpmap")
    m = build_sbi_model("lotka_volterra", "cot-flow", width=4)
    assert isinstance(m, COTFlow) and (m.x_dim, m.y_dim, m.width) == (4, 20, 4)


def test_corner_plot_and_reference_reader(tmp_path):
    rng = np.random.default_rng(0)
    p = plot_corner(rng.normal(size=(200, 3)), tmp_path / "c.png",
                    reference=rng.normal(size=(100, 3)), truth=np.zeros(3))  # fmt: skip
    assert p.stat().st_size > 1000
    with pytest.raises(ValueError, match="reference"):
        plot_corner(rng.normal(size=(20, 3)), tmp_path / "d.png", reference=np.zeros((5, 2)))
    with pytest.raises(FileNotFoundError, match="pip download"):
        sbibm_reference(tmp_path / "none.whl", "two_moons")
    bad = tmp_path / "bad.whl"
    bad.write_text("not a zip")
    with pytest.raises(ValueError, match="not a wheel"):
        sbibm_reference(bad, "two_moons")


def test_reference_reader_reads_sbibm_layout(tmp_path):
    import bz2
    import zipfile

    wheel = tmp_path / "sbibm-1.1.0-py2.py3-none-any.whl"
    base = "sbibm/tasks/two_moons/files/num_observation_3/"
    ref = np.arange(12.0).reshape(6, 2)
    body = "parameter_1,parameter_2\n" + "\n".join(f"{a},{b}" for a, b in ref)
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(base + "observation.csv", "data_1,data_2\n0.5,-0.25\n")
        z.writestr(base + "reference_posterior_samples.csv.bz2", bz2.compress(body.encode()))
    obs, r = sbibm_reference(wheel, "two_moons", 3)
    np.testing.assert_array_equal(obs, [0.5, -0.25])
    np.testing.assert_array_equal(r, ref)
    with pytest.raises(ValueError, match="no observation 4"):
        sbibm_reference(wheel, "two_moons", 4)


def test_docs_page_renders_table_and_corner_plot(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "docs" / "hooks"))
    try:
        import bench_pages_sbi
    finally:
        sys.path.pop(0)
    row = {"task": "two_moons", "simulations": 1000, "method": "pcp-map", "c2st": 0.53,
           "c2st_each": [0.52, 0.54], "train_s": 10.0, "sample_s": 0.5, "samples": 2000,
           "samples_obs1": [[0.1, 0.2], [0.3, 0.1], [0.0, 0.0]]}  # fmt: skip
    ref = {"two_moons": [[0.1, 0.1], [0.2, 0.2]]}
    data = {"meta": {"cpu_threads": 1, "command": "python benchmarks/sbi_peers.py --quick"},
            "results": [row], "reference_obs1": ref}  # fmt: skip
    (tmp_path / bench_pages_sbi.FILES[0][0]).write_text(json.dumps(data))
    pages = dict(bench_pages_sbi.render_pages(tmp_path))
    page = pages["benchmarks/sbi.md"]
    assert "| two_moons | 1000 | pcp-map | **0.530** | 0.520, 0.540 | 10.0 | 2.50 |" in page
    assert pages["benchmarks/img/sbi-0-two_moons.png"][:4] == b"\x89PNG"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not committed yet" in dict(bench_pages_sbi.render_pages(empty))["benchmarks/sbi.md"]

"""A model that leaves the library: TorchScript and ONNX files run in a process that cannot import
smart_transfer and give the run's logits on real photos; the folder loads with plain PyTorch and
timm; every run's weights say what they are; the CLI writes and refuses as documented."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import smart_transfer as st
from smart_transfer.api import build_model
from smart_transfer.cli import main
from smart_transfer.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent / "strategies"))
from tiny_images import make_images

SIZE = 32
CLASSES = ["left", "middle", "right"]
# one C for the probes: a single logistic regression fit, no worker processes
VGG_RUNS = {  # small_vgg: fast; the second is a probe on an inner layer (a ProbeModel)
    "vgg-full": ("small_vgg", "full-finetune", {}),
    "vgg-probe": ("small_vgg", "linear-probe", {"layer": "features.3", "C": 1.0}),
}
LITE_RUNS = {  # efficientnet_lite0: Conv2dSame, a probe inside a block, and the concatenated probe
    "lite-full": ("efficientnet_lite0", "full-finetune", {}),
    "lite-probe": (
        "efficientnet_lite0",
        "linear-probe",
        {"layer": "_blocks.4._project_conv", "C": 1.0},
    ),
    "lite-multi": ("efficientnet_lite0", "multi-layer-probe", {"C": 1.0}),
}
FILES = {"torchscript": "model.pt", "onnx": "model.onnx", "folder": "folder"}


@pytest.fixture(scope="module")
def data():
    x, y = make_images(60, size=40)
    x = torch.cat([x, x.flip(-1), 255 - x], 1)  # three different colour channels
    return st.data.arrays(x, y, classes=CLASSES)


@pytest.fixture(scope="module")
def photos():
    """Real photos of different sizes and shapes, one (1, 3, H, W) uint8 batch each."""
    skdata = pytest.importorskip("skimage.data")
    imgs = [skdata.chelsea(), skdata.coffee(), skdata.astronaut()[40:300, :200]]
    return [torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).unsqueeze(0) for a in imgs]


def _train_and_export(root: Path, name: str, spec: tuple, data) -> dict:
    backbone, strategy, options = spec
    result = st.train(
        backbone,
        data,
        strategy=strategy,
        size=SIZE,
        epochs=1,
        progress=False,
        device="cpu",
        out=root / name / "run",
        **options,
    )
    paths = {
        fmt: st.export(root / name / "run", root / name / "export" / f, format=fmt)
        for fmt, f in FILES.items()
    }
    return {"result": result, "paths": paths, "run": root / name / "run"}


@pytest.fixture(scope="module")
def vgg_runs(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("vgg")
    return {name: _train_and_export(root, name, spec, data) for name, spec in VGG_RUNS.items()}


@pytest.fixture(scope="module")
def lite_runs(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("lite")
    return {name: _train_and_export(root, name, spec, data) for name, spec in LITE_RUNS.items()}


def _reference(result, photos) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's own preprocessing of each photo, and its model's logits."""
    tf = result.transform()
    x = torch.cat([tf(p) for p in photos])
    result.model.eval()
    with torch.no_grad():
        return x, result.model(x)


OUTSIDE = textwrap.dedent("""
    import json, sys
    sys.modules["smart_transfer"] = None  # an installed copy must not be importable either
    try:
        import smart_transfer  # noqa: F401
        raise SystemExit("smart_transfer is importable")
    except ImportError:
        pass
    import numpy as np, onnxruntime as ort, torch
    jobs = json.loads(open(sys.argv[1]).read())
    for job in jobs:
        x = np.load(job["input"])
        ts = torch.jit.load(job["torchscript"]).eval()
        with torch.no_grad():
            np.save(job["out_ts"], ts(torch.from_numpy(x)).numpy())
        sess = ort.InferenceSession(job["onnx"], providers=["CPUExecutionProvider"])
        np.save(job["out_onnx"], sess.run(["logits"], {"input": x})[0])
    loaded = [m for m in sys.modules if m.startswith("smart_transfer.")]
    assert not loaded, "smart_transfer was loaded"
    print("ran", len(jobs))
""")


def _run_outside(runs: dict, photos, tmp_path: Path) -> None:
    """TorchScript (torch) and ONNX (onnxruntime) in ``python -I`` from another folder, no
    PYTHONPATH, smart_transfer blocked: the logits must be the run's to 1e-4."""
    pytest.importorskip("onnxruntime")
    jobs, want = [], {}
    for name, run in runs.items():
        x, logits = _reference(run["result"], photos)
        np.save(tmp_path / f"{name}_x.npy", x.numpy())
        want[name] = logits
        jobs.append(
            {
                "input": str(tmp_path / f"{name}_x.npy"),
                "torchscript": str(run["paths"]["torchscript"]),
                "onnx": str(run["paths"]["onnx"]),
                "out_ts": str(tmp_path / f"{name}_ts.npy"),
                "out_onnx": str(tmp_path / f"{name}_onnx.npy"),
            }
        )
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "outside.py").write_text(OUTSIDE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "outside.py"), str(tmp_path / "jobs.json")],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"ran {len(jobs)}" in done.stdout
    for name in runs:
        for kind in ("ts", "onnx"):
            got = torch.from_numpy(np.load(tmp_path / f"{name}_{kind}.npy"))
            assert got.shape == (len(photos), len(CLASSES))
            torch.testing.assert_close(got, want[name], atol=1e-4, rtol=0, msg=f"{name} {kind}")


def test_torchscript_and_onnx_run_outside_the_library(vgg_runs, photos, tmp_path):
    _run_outside(vgg_runs, photos, tmp_path)


@pytest.mark.slow
def test_efficientnet_lite_and_probes_run_outside_the_library(lite_runs, photos, tmp_path):
    _run_outside(lite_runs, photos, tmp_path)
    onnx = pytest.importorskip("onnx")
    for name, run in lite_runs.items():
        side = json.loads(Path(run["paths"]["torchscript"]).with_suffix(".json").read_text())
        extra = {"config.json": ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.load(run["paths"]["torchscript"], _extra_files=extra)
        inside = json.loads(extra["config.json"])
        assert (
            inside["smart_transfer"].pop("compiled_with") == "torch.jit.script"
        )  # scripted, not traced
        meta = {p.key: p.value for p in onnx.load(run["paths"]["onnx"]).metadata_props}
        assert inside == side == json.loads(meta["config.json"])
        model = run["result"].model
        if name == "lite-multi":  # the head on the concatenated features is part of the graph
            assert side["probe"]["in_features"] == model.head.in_features == 4792


def _preprocess(img: torch.Tensor, cfg: dict) -> torch.Tensor:
    """config.json's preprocessing written out in plain torch, as a user would (timm's eval
    transform): shorter side to floor(size / crop_pct), centre crop, (x - mean) / std."""
    _, h, w = cfg["input_size"]
    short = math.floor(h / cfg["crop_pct"])
    ih, iw = img.shape[-2:]
    new = (short, int(short * iw / ih)) if ih <= iw else (int(short * ih / iw), short)
    x = F.interpolate(
        img.float() / 255, size=new, mode=cfg["interpolation"], align_corners=False, antialias=True
    )
    top, left = round((x.shape[-2] - h) / 2), round((x.shape[-1] - w) / 2)
    x = x[..., top : top + h, left : left + w]
    return (x - torch.tensor(cfg["mean"]).view(1, -1, 1, 1)) / torch.tensor(cfg["std"]).view(
        1, -1, 1, 1
    )


def test_config_json_describes_the_preprocessing(vgg_runs, photos):
    run = vgg_runs["vgg-full"]
    cfg = json.loads(Path(run["paths"]["onnx"]).with_suffix(".json").read_text())
    pre = cfg["pretrained_cfg"]
    assert (
        pre["input_size"] == [3, SIZE, SIZE]
        and cfg["label_names"] == CLASSES
        and cfg["num_classes"] == 3
    )
    assert cfg["architecture"] == "small_vgg" and cfg["probe"] is None
    folder_cfg = json.loads((run["paths"]["folder"] / "config.json").read_text())
    assert folder_cfg["pretrained_cfg"] == pre
    tf = run["result"].transform()
    for p in photos:
        torch.testing.assert_close(_preprocess(p, pre), tf(p), atol=1e-5, rtol=0)


def _plain_probe_logits(net: torch.nn.Module, layers: list[str], weight, bias, x) -> torch.Tensor:
    """What config.json["probe"] says, in plain PyTorch: hooks on the layers, mean over
    positions."""
    got, handles = {}, []
    for name in layers:
        handles.append(
            net.get_submodule(name).register_forward_hook(
                lambda _m, _a, out, n=name: got.__setitem__(n, out.flatten(2).mean(2))
            )
        )
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return F.linear(torch.cat([got[n] for n in layers], 1), weight, bias)


@pytest.mark.parametrize("name", list(VGG_RUNS))
def test_folder_loads_with_plain_pytorch(vgg_runs, photos, name):
    from safetensors import safe_open
    from safetensors.torch import load_file

    run = vgg_runs[name]
    result, folder = run["result"], run["paths"]["folder"]
    cfg = json.loads((folder / "config.json").read_text())
    state = load_file(folder / "model.safetensors")
    with safe_open(folder / "model.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["architecture"] == cfg["architecture"] == "small_vgg"
    assert json.loads(meta["label_names"]) == cfg["label_names"] == CLASSES
    assert json.loads(meta["pretrained_cfg"]) == cfg["pretrained_cfg"]
    x, want = _reference(result, photos)
    rebuilt = build_model(result.config).eval()  # the untrained network the run's weights fit
    if cfg["probe"] is None:
        assert set(state) == set(rebuilt.state_dict())  # the plain network's keys, no prefix
        rebuilt.load_state_dict(state)
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(x), want, atol=1e-5, rtol=0)
        return
    backbone = {k: v for k, v in state.items() if not k.startswith("probe_head.")}
    net = (
        rebuilt.features.model
    )  # the backbone inside the probe wrapper: no "features.model." prefix
    assert set(backbone) == set(net.state_dict()) and set(state) - set(backbone) == {
        "probe_head.weight",
        "probe_head.bias",
    }
    net.load_state_dict(backbone)
    assert cfg["probe"]["layers"] == ["features.3"]
    torch.testing.assert_close(state["probe_head.weight"], result.model.head.weight.detach())
    got = _plain_probe_logits(
        net, cfg["probe"]["layers"], state["probe_head.weight"], state["probe_head.bias"], x
    )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_every_run_weights_carry_architecture_classes_preprocessing(vgg_runs):
    from safetensors import safe_open

    run = vgg_runs["vgg-probe"]
    with safe_open(run["run"] / "model.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["architecture"] == "small_vgg" and meta["strategy"] == "linear-probe"
    assert json.loads(meta["label_names"]) == CLASSES
    pre = json.loads(meta["pretrained_cfg"])
    tf = run["result"].transform()
    assert pre["input_size"] == [3, SIZE, SIZE] and pre["mean"] == tf.mean.flatten().tolist()
    assert pre["crop_pct"] == tf.crop_pct and pre["interpolation"] == tf.interpolation
    assert json.loads(meta["model"]) == {"kind": "probe", "layer": "features.3", "in_features": 32}


def test_timm_reads_the_folder(data, tmp_path, photos):
    timm = pytest.importorskip("timm")
    net = st.load_backbone("timm:resnet18", pretrained=False)  # offline: no weights needed
    result = st.train(
        net, data, strategy="full-finetune", size=SIZE, epochs=1, progress=False, device="cpu"
    )
    st.export(result, tmp_path / "folder", format="folder")
    loaded = timm.create_model(f"local-dir:{tmp_path / 'folder'}", pretrained=True).eval()
    assert loaded.pretrained_cfg["label_names"] == CLASSES and loaded.pretrained_cfg["input_size"][
        1:
    ] == [SIZE, SIZE]
    x, want = _reference(result, photos)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), want, atol=1e-5, rtol=0)


def test_cli_export_writes_and_refuses(vgg_runs, tmp_path, capsys):
    run = str(vgg_runs["vgg-probe"]["run"])
    for fmt, name in FILES.items():
        out = tmp_path / "cli" / name
        assert main(["export", run, "--format", fmt, "--out", str(out)]) == 0
        assert fmt in capsys.readouterr().out
        written = (
            [out / "config.json", out / "model.safetensors"]
            if fmt == "folder"
            else [out, out.with_suffix(".json")]
        )
        assert all(p.is_file() and p.stat().st_size > 0 for p in written)
    assert (
        main(["export", run, "--format", "pickle", "--out", str(tmp_path / "m.pkl")]) == 2
    )  # argparse
    assert "invalid choice" in capsys.readouterr().err
    weights = Path(run) / "model.safetensors"
    before = weights.read_bytes()
    for out in (
        weights,
        Path(run) / "config.pt",
    ):  # the run's weights; a .json beside it is the run's config
        assert main(["export", run, "--format", "torchscript", "--out", str(out)]) == 2
        assert "input run" in capsys.readouterr().err
    assert main(["export", run, "--format", "folder", "--out", run]) == 2
    assert weights.read_bytes() == before
    assert main(["export", run, "--out", str(tmp_path / "model.json")]) == 2
    assert ".json" in capsys.readouterr().err


def test_python_export_refuses_unknown_format(vgg_runs, tmp_path):
    import smart_transfer.exporting

    assert (
        st.export is smart_transfer.exporting.export
    )  # importing the module leaves st.export the function
    with pytest.raises(ConfigError, match="torchscript, onnx, folder"):
        st.export(vgg_runs["vgg-full"]["result"], tmp_path / "m.bin", format="pickle")
    assert not list(tmp_path.iterdir())


def test_efficientnet_lite_scripts_with_tf_same_padding():
    from smart_transfer.models import load_backbone

    torch.manual_seed(0)
    net = load_backbone("efficientnet_lite0", pretrained=False).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.10 calls TorchScript deprecated
        scripted = torch.jit.script(net)  # Conv2dSame's input-dependent padding compiles
    for hw in ((32, 32), (33, 35)):  # odd sizes: the extra pixel goes bottom/right
        x = torch.randn(2, 3, *hw)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), net(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "backbone,layer,after",
    [
        ("small_vgg", "features.3", "features.7"),
        ("efficientnet_lite0", "_blocks.4._project_conv", "_conv_head"),
    ],
)
def test_probe_twins_script_and_stop_after_their_layer(backbone, layer, after):
    from smart_transfer.models import load_backbone, replace_head
    from smart_transfer.strategies.concat import ConcatProbe
    from smart_transfer.strategies.probe import ProbeModel

    torch.manual_seed(0)
    net = replace_head(load_backbone(backbone, pretrained=False), 3).eval()
    x = torch.randn(2, 3, 36, 36)
    width = ProbeModel(net, layer, 1, 3).features(x).shape[1]
    probe = ProbeModel(net, layer, width, 3).eval()
    twin = probe.scriptable()
    names = dict(twin.body.named_modules())
    assert (
        layer in names and after not in names
    )  # the graph ends at the probed layer: the early exit
    concat = ConcatProbe(
        net, [layer, "penultimate"], torch.nn.Linear(width + _head_in(net), 3), 3
    ).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # TorchScript's deprecation; the trace's notes on Conv2dSame's padding
        for model in (probe, concat):
            want = model(x)
            torch.testing.assert_close(
                torch.jit.script(model.scriptable())(x), want, atol=1e-5, rtol=0
            )
            torch.testing.assert_close(
                torch.jit.trace(model, x)(x), want, atol=1e-5, rtol=0
            )  # hooks trace too


def _head_in(net: torch.nn.Module) -> int:
    from smart_transfer.models import find_head

    return int(find_head(net)[1].in_features)


def test_unscriptable_network_is_traced_and_says_why():
    from smart_transfer.exporting import compile_model

    class Unscriptable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            try:  # try/except is beyond TorchScript
                y = self.conv(x)
            except RuntimeError:
                y = x
            return y.mean((2, 3))

    net = Unscriptable().eval()
    x = torch.randn(2, 3, 8, 8)
    compiled, how = compile_model(net, x)
    assert how.startswith("torch.jit.trace (torch.jit.script failed: ")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), net(x))

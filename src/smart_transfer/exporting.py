"""A trained model that leaves the library: TorchScript, ONNX, or a timm-style folder.

(``st.export`` is this module's :func:`export`; the module is not called ``export`` because
importing ``smart_transfer.export`` would then replace the function on the package.)

As timm's models do, every exported network takes the *preprocessed* batch, ``(B, C, H, W)``
float32, exactly what :meth:`TrainResult.transform` makes of a uint8 image batch, and returns
the logits ``(B, num_classes)``. The preprocessing itself (input size, mean, std, crop_pct,
interpolation) is written beside the network as JSON, in timm's ``pretrained_cfg`` terms:

* ``torchscript``: ``PATH`` (``torch.jit.load(PATH)``) and ``PATH.with_suffix(".json")``; the
  same JSON is inside the file too (``torch.jit.load(PATH, _extra_files={"config.json": ""})``).
* ``onnx``: ``PATH`` (input ``"input"``, output ``"logits"``, the batch axis dynamic) and
  ``PATH.with_suffix(".json")``; the JSON is also in the model's ``metadata_props``. The JSON
  does not depend on the format, so ``model.pt`` and ``model.onnx`` share ``model.json``.
* ``folder``: ``PATH/config.json`` (``architecture``, ``num_classes``, ``label_names``,
  ``pretrained_cfg``) and ``PATH/model.safetensors`` holding the plain network's state dict
  (no wrapper prefixes), its metadata carrying the same fields. A timm backbone's folder loads
  with ``timm.create_model("local-dir:PATH")``. A probe on inner layers is not the plain
  network: its folder holds the backbone's weights plus ``probe_head.weight`` / ``.bias`` and
  says in ``config.json["probe"]`` which layers' mean-pooled outputs, side by side, feed it.

Probe models (:class:`~smart_transfer.strategies.probe.ProbeModel`,
:class:`~smart_transfer.strategies.concat.ConcatProbe`) are exported through their hook-free
twin (``.scriptable()``). Every network is compiled with ``torch.jit.script`` when it can be
and traced otherwise, and its logits are checked against the run's before anything is written.
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from ._atomic import PathLike, atomic_open
from ._paths import check_output_folders, check_outputs
from .errors import ConfigError, MissingDependencyError

FORMATS = ("torchscript", "onnx", "folder")
EXPORT_SCHEMA = 1
PROBE_HEAD = "probe_head"  # key prefix of a probe's linear layer in an exported folder
TOLERANCE = 1e-4  # largest |logit difference| accepted between the export and the run's model


# --------------------------------------------------------------------------- what is exported


def preprocessing(transform: Any) -> dict[str, Any]:
    """The evaluation transform (a :class:`~smart_transfer.data.transforms.BatchTransform`) in
    timm's ``pretrained_cfg`` terms: what a user must do to an image before the network.

    ``crop_pct``: resize the shorter side to ``floor(size / crop_pct)`` (antialiased, with
    ``interpolation``), then crop the centre ``input_size``; ``None``: resize straight to it.
    Pixels are scaled to [0, 1] before ``(x - mean) / std``.
    """
    size = getattr(transform, "size", None)
    channels = int(getattr(transform, "channels", 3))
    mean, std = getattr(transform, "mean", None), getattr(transform, "std", None)
    if size is None or mean is None or std is None:
        raise ConfigError(
            "the run's evaluation transform has no fixed input size; train with --size N to export "
            "it"
        )
    return {
        "input_size": [channels, int(size[0]), int(size[1])],
        "mean": [_short(v) for v in mean.flatten().tolist()],
        "std": [_short(v) for v in std.flatten().tolist()],
        "crop_pct": getattr(transform, "crop_pct", None),
        "crop_mode": "center",
        "interpolation": str(getattr(transform, "interpolation", "bilinear")),
    }


def _short(value: float) -> float:
    """A float32 buffer's value as it was typed (0.485, not 0.48500001430511475)."""
    return float(f"{value:.7g}")


def architecture(result: Any) -> str:
    """The backbone's name as its own library spells it: timm's ``pretrained_cfg["architecture"]``
    when the network has one (also for a timm model passed as an object), else the run's
    backbone name without its ``timm:`` / ``torchvision:`` prefix."""
    cfg = getattr(_plain_backbone(result.model), "pretrained_cfg", None)
    if isinstance(cfg, dict) and isinstance(cfg.get("architecture"), str):
        return str(cfg["architecture"])
    name = str(result.config.get("backbone"))
    for prefix in ("timm:", "torchvision:"):
        name = name.removeprefix(prefix)
    return name


def describe(result: Any) -> dict[str, Any]:
    """config.json of an export: timm's fields, the probe's layers, and where it came from."""
    prep = preprocessing(result.transform())
    net = _plain_backbone(result.model)
    from .models.heads import find_head

    classes = [
        str(c) for c in result.config.get("class_names") or range(int(result.config["num_classes"]))
    ]
    kind = result.config.get("model") or {"kind": "backbone"}
    probe = None
    if kind.get("kind") in ("probe", "concat"):
        layers = kind["layers"] if kind["kind"] == "concat" else [kind["layer"]]
        probe = {
            "layers": list(layers),
            "in_features": int(kind["in_features"]),
            "pool": "mean over positions: (B, C, H, W) -> (B, C); tokens (B, T, C) -> (B, C)",
            "head": PROBE_HEAD,
            "note": "logits = probe_head(cat([pool(output of layer) for layer in layers], 1)); "
            "'penultimate' is the input of the backbone's classifier, whose own weights "
            "the probe does not use",
        }
    return {
        "architecture": architecture(result),
        "num_classes": int(result.config["num_classes"]),
        "num_features": _num_features(net),
        "label_names": classes,
        "pretrained_cfg": {
            **prep,
            "num_classes": int(result.config["num_classes"]),
            "classifier": find_head(net)[0],
            "architecture": architecture(result),
        },
        "probe": probe,
        "smart_transfer": {
            "schema_version": EXPORT_SCHEMA,
            "version": result.config.get("version"),
            "backbone": result.config.get("backbone"),
            "strategy": result.strategy,
            "input": "the preprocessed float batch (B, C, H, W): pixels scaled to [0, 1], "
            "resized and cropped as pretrained_cfg says, then (x - mean) / std",
            "output": "logits (B, num_classes), in label_names order",
        },
    }


def weights_metadata(result: Any) -> dict[str, str]:
    """safetensors metadata (str -> str) of a run's or an export's weights: the architecture,
    the class names and the preprocessing, as JSON where they are not plain strings."""
    meta = {
        "format": "pt",
        "strategy": str(result.strategy),
        "backbone": str(result.config.get("backbone")),
        "architecture": architecture(result),
        "num_classes": str(result.config.get("num_classes")),
        "label_names": json.dumps([str(c) for c in result.config.get("class_names") or []]),
        "model": json.dumps(result.config.get("model") or {"kind": "backbone"}),
    }
    try:
        meta["pretrained_cfg"] = json.dumps(preprocessing(result.transform()))
    except ConfigError:
        pass  # a network without a fixed input size: nothing to say about preprocessing
    return meta


def _plain_backbone(model: nn.Module) -> nn.Module:
    """The backbone inside a probe wrapper (the model itself otherwise)."""
    from .strategies.concat import ConcatProbe
    from .strategies.probe import ProbeModel

    if isinstance(model, ProbeModel):
        return model.features.model
    if isinstance(model, ConcatProbe):
        return model.model
    return model


def _num_features(net: nn.Module) -> int | None:
    from .models.heads import find_head

    head = find_head(net)[1]
    value = getattr(head, "in_features", getattr(head, "in_channels", None))
    return int(value) if isinstance(value, int) else None


def plain_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict under the backbone's own key names; a probe's linear layer as
    ``probe_head.weight`` / ``probe_head.bias`` (a plain backbone has no such keys)."""
    from .strategies.concat import ConcatProbe
    from .strategies.probe import ProbeModel

    if isinstance(model, (ProbeModel, ConcatProbe)):
        state = {k: v for k, v in _plain_backbone(model).state_dict().items()}
        head = model.head.state_dict()
        return {**state, **{f"{PROBE_HEAD}.{k}": v for k, v in head.items()}}
    return dict(model.state_dict())


# --------------------------------------------------------------------------- compiling


def _graph(model: nn.Module) -> nn.Module:
    """A probe's hook-free twin when it can be built (else the probe itself, to be traced)."""
    scriptable = getattr(model, "scriptable", None)
    if callable(scriptable):
        try:
            return cast(nn.Module, scriptable())
        except ConfigError:
            return model
    return model


def compile_model(model: nn.Module, example: Tensor) -> tuple[torch.jit.ScriptModule, str]:
    """``torch.jit.script`` (control flow kept, shapes free), else ``torch.jit.trace`` on
    ``example`` (the recorded operations of that one input: its size is then fixed), and how
    (``"torch.jit.trace (...)"`` names what stopped the script)."""
    graph = _graph(model)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # torch >= 2.10 calls TorchScript deprecated; it still runs everywhere
        try:
            return torch.jit.script(graph), "torch.jit.script"
        except Exception as exc:  # noqa: BLE001  (TorchScript raises several error types for unsupported code)
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            why = lines[0] if lines else type(exc).__name__
            with torch.no_grad():
                traced = torch.jit.trace(graph, example, check_trace=True)
            return traced, f"torch.jit.trace (torch.jit.script failed: {why})"


def _check_logits(what: str, got: Tensor | Any, want: Tensor) -> None:
    got = torch.as_tensor(got)
    diff = float((got.float() - want.float()).abs().max())
    if got.shape != want.shape or not diff <= TOLERANCE:
        raise ConfigError(
            f"the {what} export does not reproduce the run's logits (max difference {diff:.2e}); "
            "export --format folder and load the weights in PyTorch instead"
        )


def _example(prep: dict[str, Any], batch: int = 2) -> Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, *prep["input_size"], generator=gen)


# --------------------------------------------------------------------------- writers


def _write_torchscript(
    model: nn.Module, path: Path, config: dict[str, Any], example: Tensor
) -> str:
    """The compiled network, its config inside the file (``compiled_with`` added)."""
    compiled, how = compile_model(model, example)
    with torch.no_grad():
        want = model(example)
        _check_logits("TorchScript", compiled(example), want)
        _check_logits("TorchScript", compiled(example[:1]), want[:1])
    config = {**config, "smart_transfer": {**config["smart_transfer"], "compiled_with": how}}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        torch.jit.save(compiled, buf, _extra_files={"config.json": json.dumps(config)})
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())
    return how


def _write_onnx(model: nn.Module, path: Path, config: dict[str, Any], example: Tensor) -> None:
    graph = _graph(model)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(  # the TorchScript-based exporter; it writes to a file object too
                graph,
                (example,),
                buf,  # type: ignore[arg-type]
                dynamo=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
            )
        except ImportError as exc:
            raise MissingDependencyError(
                f"ONNX export needs the onnx package: pip install onnx ({exc})"
            ) from exc
    blob = _with_onnx_metadata(buf.getvalue(), config)
    _check_onnx(blob, model, example)
    with atomic_open(path, "wb") as f:
        f.write(blob)


def _with_onnx_metadata(blob: bytes, config: dict[str, Any]) -> bytes:
    """The config as the model's ``metadata_props`` (when the ``onnx`` package is there)."""
    try:
        import onnx
    except ImportError:
        return blob
    proto = onnx.load_from_string(blob)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "config.json", json.dumps(config)
    return cast(bytes, proto.SerializeToString())


def _check_onnx(blob: bytes, model: nn.Module, example: Tensor) -> None:
    """Run the exported graph in onnxruntime when it is installed: the logits must be the run's."""
    try:
        import onnxruntime as ort  # type: ignore[import-untyped]
    except ImportError:
        return
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model(example)
    for x, w in ((example, want), (example[:1], want[:1])):
        _check_logits("ONNX", session.run(["logits"], {"input": x.numpy()})[0], w)


def _write_folder(result: Any, model: nn.Module, folder: Path, config: dict[str, Any]) -> None:
    from .training import checkpoint as ckpt

    folder.mkdir(parents=True, exist_ok=True)
    meta = weights_metadata(result)
    del meta[
        "model"
    ]  # the run's wrapper: the folder holds plain key names (and "probe" says the rest)
    meta["pretrained_cfg"] = json.dumps(config["pretrained_cfg"])
    if config["probe"] is not None:
        meta["probe"] = json.dumps(config["probe"])
    ckpt.save_weights(folder / "model.safetensors", plain_state_dict(model), metadata=meta)
    _write_json(folder / "config.json", config)


def _write_json(path: Path, obj: Any) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# --------------------------------------------------------------------------- entry point


def _as_result(run: Any) -> tuple[Any, Path | None]:
    from .api import TrainResult

    if isinstance(run, TrainResult):
        return run, run.out
    if isinstance(run, (str, os.PathLike)):
        return TrainResult.load(run), Path(run)
    raise ConfigError(f"export takes a run folder or a TrainResult, got {type(run).__name__}")


def sidecar(path: PathLike) -> Path:
    """Where the preprocessing JSON of a TorchScript / ONNX file goes: beside it, ``.json``."""
    return Path(path).with_suffix(".json")


def export(run: Any, out: PathLike, format: str = "torchscript") -> Path:
    """Write the run's network for use without smart_transfer; returns ``out``.

    ``run``: a run folder or a :class:`~smart_transfer.api.TrainResult`. ``format``:
    ``"torchscript"`` or ``"onnx"`` (the file ``out`` and its preprocessing in
    ``out.with_suffix(".json")``), or ``"folder"`` (``out/config.json`` and
    ``out/model.safetensors``, as timm writes them). The network takes the batch that
    ``result.transform()`` makes and returns logits; see the module's docstring.
    """
    if format not in FORMATS:
        raise ConfigError(
            f"unknown export format {format!r}; use one of {', '.join(FORMATS)} (--format)"
        )
    result, run_dir = _as_result(run)
    inputs = (
        {f"run ({p.name})": p for p in sorted(run_dir.iterdir()) if p.is_file()} if run_dir else {}
    )
    out = Path(out)
    if format == "folder":
        check_output_folders({"--out": out}, {"run": run_dir})
        targets = {
            "--out (config.json)": out / "config.json",
            "--out (model.safetensors)": out / "model.safetensors",
        }
    else:
        if out.suffix.lower() == ".json":
            raise ConfigError(
                f"--out={str(out)!r} ends in .json, which is where the preprocessing goes; "
                "name the model file, e.g. model.onnx or model.pt"
            )
        targets = {"--out": out, "--out (preprocessing)": sidecar(out)}
    check_outputs(targets, inputs)
    model = copy.deepcopy(result.model).cpu().float().eval()
    config = describe(result)
    if format == "folder":
        _write_folder(result, model, out, config)
        return out
    example = _example(config["pretrained_cfg"])
    if format == "torchscript":
        _write_torchscript(model, out, config, example)
    else:
        _write_onnx(model, out, config, example)
    _write_json(sidecar(out), config)
    return out

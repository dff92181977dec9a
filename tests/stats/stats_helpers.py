"""Reference implementations and small models shared by the stats tests.

Every statistic the profiler reports is recomputed here with numpy in float64 from activations
captured directly (a plain forward hook that copies the output), so the tests compare two
independent computations on the same data.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from smart_transfer.models.small import SmallVGG


def tiny_vgg(batch_norm: bool = True, seed: int = 0) -> SmallVGG:
    """A SmallVGG small enough for 16x16 inputs in milliseconds."""
    torch.manual_seed(seed)
    model = SmallVGG(num_classes=3, widths=(4, 6), batch_norm=batch_norm)
    if batch_norm:
        # Non-trivial running statistics and affine parameters, so that BN outputs differ
        # from conv outputs and eval mode really matters.
        gen = torch.Generator().manual_seed(seed + 1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def image_batches(
    n_batches: int = 3, batch: int = 5, size: int = 16, seed: int = 0
) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, size, size, generator=gen) for _ in range(n_batches)]


def capture(
    model: nn.Module, modules: dict[str, str], batches: Iterable[torch.Tensor]
) -> dict[str, np.ndarray]:
    """Output of each named module over all batches, as (values, channels) float64 arrays.

    ``modules`` maps a key to the module whose output is captured. Conv/BN outputs have
    channels at dim 1, Linear outputs at the last dim.
    """
    mods = dict(model.named_modules())
    got: dict[str, list[np.ndarray]] = {k: [] for k in modules}

    def hook_for(key: str, mod: nn.Module):
        def hook(_m, _i, out):
            t = out.detach().to(torch.float64).clone()
            if isinstance(mod, nn.Linear) or t.ndim == 2:
                t = t.reshape(-1, t.shape[-1])
            else:
                t = t.movedim(1, -1).reshape(-1, t.shape[1])
            got[key].append(t.numpy())

        return hook

    handles = [
        mods[name].register_forward_hook(hook_for(key, mods[name])) for key, name in modules.items()
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {k: np.concatenate(v, axis=0) for k, v in got.items()}


def ref_stats(v: np.ndarray, edges: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """numpy float64 statistics of (values, channels) data, as the profiler defines them."""
    v = np.asarray(v, dtype=np.float64)
    n, c = v.shape
    out: dict[str, np.ndarray] = {
        "count": np.full(c, float(n)),
        "mean": v.mean(0),
        "var": v.var(0),
        "min": v.min(0),
        "max": v.max(0),
        "zero_frac": (v == 0).mean(0),
        "cov": np.cov(v, rowvar=False, bias=True).reshape(c, c),
    }
    log_count, log_mean, log_var = np.zeros(c), np.zeros(c), np.zeros(c)
    for j in range(c):
        nz = v[:, j][v[:, j] != 0]
        log_count[j] = nz.size
        if nz.size:
            logs = np.log(np.abs(nz))
            log_mean[j], log_var[j] = logs.mean(), logs.var()
    out.update(log_count=log_count, log_mean=log_mean, log_var=log_var)
    if edges is not None:
        bins = edges.size - 1
        idx = np.searchsorted(edges[1:-1], v, side="right")  # edges[i] <= x < edges[i+1]
        out["hist"] = np.stack([np.bincount(idx[:, j], minlength=bins) for j in range(c)]).astype(
            np.float64
        )
        out["hist_count"] = np.full(c, float(n))
    return out


def assert_layer_matches(
    lp, ref: dict[str, np.ndarray], *, rtol: float = 1e-5, exact_sample: bool = True
) -> None:
    """Compare a LayerProfile with :func:`ref_stats` (float32 activations: rtol ~1e-5)."""
    np.testing.assert_array_equal(lp.count.numpy(), ref["count"])
    scale = np.sqrt(ref["var"].max()) + 1e-12
    np.testing.assert_allclose(lp.mean.numpy(), ref["mean"], rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(lp.var.numpy(), ref["var"], rtol=rtol, atol=rtol * scale**2)
    np.testing.assert_array_equal(lp.min.numpy(), ref["min"])
    np.testing.assert_array_equal(lp.max.numpy(), ref["max"])
    np.testing.assert_array_equal(lp.zero_frac.numpy(), ref["zero_frac"])
    if lp.cov is not None:
        np.testing.assert_allclose(lp.cov.numpy(), ref["cov"], rtol=rtol, atol=rtol * scale**2)
    if exact_sample:
        np.testing.assert_array_equal(lp.log_count.numpy(), ref["log_count"])
        np.testing.assert_allclose(lp.log_mean.numpy(), ref["log_mean"], rtol=rtol, atol=rtol)
        np.testing.assert_allclose(lp.log_var.numpy(), ref["log_var"], rtol=1e-4, atol=1e-4)
        if "hist" in ref and lp.hist is not None:
            np.testing.assert_array_equal(lp.hist.numpy(), ref["hist"])
            np.testing.assert_array_equal(lp.hist_count.numpy(), ref["hist_count"])


def profiles_equal(a, b, *, rtol: float = 1e-9) -> None:
    """Two ActivationProfiles agree: same layers, exact counts/extremes/histograms, close
    moments."""
    assert list(a.layers) == list(b.layers)
    assert a.num_samples == b.num_samples
    assert a.source == b.source
    for name in a.layers:
        la, lb = a[name], b[name]
        assert la.available() == lb.available(), name
        for key in (
            "count",
            "min",
            "max",
            "zero_frac",
            "log_count",
            "hist",
            "hist_count",
            "hist_edges",
        ):
            va, vb = getattr(la, key), getattr(lb, key)
            if va is None:
                assert vb is None
                continue
            torch.testing.assert_close(va, vb, rtol=0, atol=0, equal_nan=True, msg=f"{name}.{key}")
        for key in ("mean", "var", "cov", "log_mean", "log_var"):
            va, vb = getattr(la, key), getattr(lb, key)
            if va is None:
                assert vb is None
                continue
            if key in ("var", "cov"):
                scale = float(la.var.max())
            elif key == "mean":
                scale = float(la.var.max()) ** 0.5
            else:
                scale = 1.0  # log moments are O(1) numbers
            torch.testing.assert_close(
                va, vb, rtol=rtol, atol=rtol * (scale + 1e-300) + 1e-12, msg=f"{name}.{key}"
            )


# -- torch.distributed worker (module level, so that spawned processes can import it) -----------


def dist_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Profile this rank's shard under a 2-process gloo group; save what every scenario gives."""
    import os

    import smart_transfer as st
    from smart_transfer.training.distributed import launched_group

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    with launched_group("cpu"):  # a gloo group; every rank waits for the others before it ends
        model = tiny_vgg()
        batches = image_batches(4, batch=3, size=12, seed=5)
        kw = {
            "progress": False,
            "sample_per_batch": None,
            "cov_sample_per_batch": None,
            "hist_sample_per_batch": None,
        }
        # 1. each rank a different shard: rank 0 gets batches 0, 2; rank 1 gets 1, 3
        prof = st.profile(model, batches[rank::world], **kw)
        prof.save(os.path.join(out_dir, f"sharded_rank{rank}.pt"))
        # 2. an empty shard on rank 1
        prof = st.profile(model, batches if rank == 0 else [], **kw)
        prof.save(os.path.join(out_dir, f"empty_rank{rank}.pt"))
        # 3. rank 1 hits a NaN: both ranks must raise instead of waiting for each other
        bad = [b.clone() for b in batches[:2]]
        if rank == 1:
            bad[1][0, 0, 0, 0] = float("nan")
        try:
            st.profile(model, bad, **kw)
            msg = "no error"
        except Exception as e:  # noqa: BLE001 - the test inspects what was raised
            msg = f"{type(e).__name__}: {e}"
        with open(os.path.join(out_dir, f"error_rank{rank}.txt"), "w") as fh:
            fh.write(msg)
        # 4. distributed=False keeps the local profile
        prof = st.profile(model, batches[rank::world], distributed=False, **kw)
        prof.save(os.path.join(out_dir, f"local_rank{rank}.pt"))

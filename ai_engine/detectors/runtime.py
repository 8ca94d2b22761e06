"""Where a deployed model runs: its deployed file on the CPU, or its eager PyTorch twin on a GPU when one is present.

On the CPU a bundle runs the faster of ONNX Runtime and TorchScript, as its ``deployed`` file says.
On the idle 2-core machine (``ai_engine.training.deploy_timing``) ONNX Runtime runs 32 ICH slabs in
0.098 s against TorchScript's 0.108 s (2026-11-22), but 64 nodule patches in 0.157 s against
TorchScript's 0.114 s (bundle 1.4.1, 2026-12-08, its metadata's ``deployment``): ``nodule_fusion``
deploys ``model.ts``, the ICH and mammography bundles ``model.onnx``. ``torch.jit`` is deprecated in
the pinned PyTorch 2.13 (it warns, and works); should a later pin drop it, the nodule bundle's
``model.onnx`` serves once ``inference.json`` names it (a new Device UID). The CPU wheel of ONNX
Runtime has no GPU provider, so on CUDA the bundle's ``model.pt`` weights run in eager PyTorch
instead. All take the same named float32 inputs and give the same outputs in the same order (the
parity tests hold them to it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ai_engine.errors import DetectorInputError

if TYPE_CHECKING:
    from torch import nn

FUSION_INPUTS = ("image", "clinical", "clinical_present", "text", "text_present")  # every FusionHead export
DEVICES = ("auto", "cpu", "cuda", "torch-cpu")  # cpu = the deployed file; torch-cpu = eager PyTorch on the CPU (parity)


def _torch_device(device: str) -> str | None:
    """The torch device for ``device`` ("auto": CUDA when present), or None for ONNX Runtime."""
    if device not in DEVICES:
        raise DetectorInputError(f"device must be one of {DEVICES}, got {device!r}")
    if device in ("cpu", "torch-cpu"):
        return None if device == "cpu" else "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise DetectorInputError("device 'cuda' was asked for, but PyTorch sees no CUDA GPU")
    return None


class DeployedModel:
    """One deployed network of a bundle, called with named numpy inputs; returns its outputs as numpy arrays.

    On the CPU path the deployed file runs as it is: ``model.onnx``-style files in ONNX Runtime
    with ``threads`` intra-op threads, ``.ts`` files as TorchScript, for which loading sets PyTorch's
    process-wide intra-op threads to ``threads`` (else one job would take every core of the host).
    ``eager`` builds the PyTorch module with the bundle's weights (positional inputs in
    ``input_names`` order; a tensor or a tuple of tensors out); it is only called when the
    model runs in eager PyTorch (a GPU, or ``torch-cpu``).
    """

    def __init__(self, deployed_path: Path, input_names: Sequence[str], *, threads: int,
                 eager: Callable[[], nn.Module], device: str = "auto") -> None:
        self.input_names = tuple(input_names)
        self.torch_device = _torch_device(device)
        self.module: nn.Module | None = None
        self.session = None
        if self.torch_device is not None:
            self.module = eager().to(self.torch_device).eval()
            self.runtime = f"torch-{self.torch_device}"
        elif deployed_path.suffix == ".ts":
            import torch

            torch.set_num_threads(threads)
            self.module = torch.jit.load(str(deployed_path), map_location="cpu").eval()
            self.torch_device = "cpu"
            self.runtime = "torchscript-cpu"
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(deployed_path), options, providers=["CPUExecutionProvider"])
            self.runtime = "onnxruntime-cpu"

    def __call__(self, **feeds: np.ndarray) -> list[np.ndarray]:
        missing = set(self.input_names) - set(feeds)
        if missing:
            raise DetectorInputError(f"model inputs missing: {sorted(missing)} (needs {list(self.input_names)})")
        if self.module is None:
            return self.session.run(None, {name: feeds[name] for name in self.input_names})  # type: ignore[union-attr]
        import torch

        with torch.no_grad():
            out = self.module(*(torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.torch_device)
                                for name in self.input_names))
        return [t.float().cpu().numpy() for t in (out if isinstance(out, tuple) else (out,))]


def deploy_network_and_fusion(network_path: Path, network_inputs: Sequence[str], fusion_path: Path, *, threads: int,
                              device: str, load_eager: Callable[[], nn.Module]) -> tuple[DeployedModel, DeployedModel]:
    """A bundle's image network and fusion head as deployed models, each as its deployed file says (on a GPU both
    in eager PyTorch).

    ``load_eager`` builds the bundle's ``model.pt`` as one module with ``network`` and ``fusion``
    parts; it runs at most once for both, and only on the PyTorch path.
    """
    eager = functools.cache(load_eager)
    return (DeployedModel(network_path, network_inputs, threads=threads, device=device,
                          eager=lambda: eager().network),
            DeployedModel(fusion_path, FUSION_INPUTS, threads=threads, device=device, eager=lambda: eager().fusion))

"""Where latency is measured: onnxruntime on the CPU, eager PyTorch on the CPU, PyTorch on CUDA.

A backend turns a module and an input shape into a :class:`Runner`, a callable that runs one
inference on an input bound once. Units of a table and whole models go through the same code
path with the same settings (threads, graph optimisation, IO binding), so that the table prices
blocks the way they run inside a network.
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from supernet.errors import EfnasError
from supernet.io import torch_threads

__all__ = ["BACKENDS", "ONNX_OPSET", "Backend", "Runner", "get_backend", "onnx_bytes"]

BACKENDS = ("onnxruntime", "torch", "torch-cuda")
ONNX_OPSET = 17  # the opset every table is measured with; exports use it too


@dataclass
class Runner:
    """One inference on a fixed input: ``run()`` computes, ``refresh()`` rewrites the input in
    place (untimed) so it is in the cache, as a block's input is inside a network."""

    run: Callable[[], Any]
    refresh: Callable[[], None]
    keep: list[Any] = field(default_factory=list)  # objects the callables need alive


def onnx_bytes(
    module: nn.Module, input_shape: tuple[int, ...], *, output_name: str = "output", dynamic_batch: bool = False
) -> bytes:
    """``module`` in eval mode exported to ONNX as bytes: the TorchScript exporter at
    :data:`ONNX_OPSET`, input ``input``. Tables and exported models both go through here, so an
    exported model runs the graph its latency was priced with."""
    buffer = io.BytesIO()
    example = torch.zeros(input_shape)
    dynamic_axes = {"input": {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which is ~5x slower per
        # export; a table exports hundreds of blocks, and blocks and whole models use the same one.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (example,),
            buffer,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["input"],
            output_names=[output_name],
            dynamic_axes=dynamic_axes,
        )
    return buffer.getvalue()


class Backend:
    """Base class: ``name``, the thread count, the clock, and :meth:`prepare`."""

    name = ""
    precision = "fp32"

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise EfnasError(f"threads must be at least 1, got {threads}")
        self.threads = threads

    @property
    def clock(self) -> str:
        """``thread-cpu`` when one CPU thread does all the work, else ``wall``.

        With one thread the inference runs in the calling thread, so its CPU time equals the
        wall-clock latency on an idle core, and it does not count the time the thread spends
        preempted by other processes: the table stays usable on a shared machine.
        """
        return "thread-cpu" if self.threads == 1 and self.name != "torch-cuda" else "wall"

    def timer(self) -> Callable[[], int]:
        return time.thread_time_ns if self.clock == "thread-cpu" else time.perf_counter_ns

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...], seed: int = 0) -> Runner:
        raise NotImplementedError

    def details(self) -> dict[str, Any]:
        """What a table records about how it was measured."""
        return {"threads": self.threads}

    @contextmanager
    def session(self) -> Iterator[None]:
        """Process-wide settings held while measuring (torch's own thread pool)."""
        with torch_threads(self.threads), torch.inference_mode():
            yield


def _random_input(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def _options(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        return options

    def details(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "threads": self.threads,
            "onnxruntime": ort.__version__,
            "provider": "CPUExecutionProvider",
            "opset": ONNX_OPSET,
            "graph_optimization": "ORT_ENABLE_ALL",
            "execution_mode": "sequential",
            "io_binding": True,
            "clock": self.clock,
        }

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...], seed: int = 0) -> Runner:
        import onnxruntime as ort

        model = onnx_bytes(module, input_shape)
        session = ort.InferenceSession(model, self._options(), providers=["CPUExecutionProvider"])
        source = _random_input(input_shape, seed)
        data = source.copy()
        value = ort.OrtValue.ortvalue_from_numpy(data)
        binding = session.io_binding()
        binding.bind_ortvalue_input(session.get_inputs()[0].name, value)
        binding.bind_output(session.get_outputs()[0].name)
        session.run_with_iobinding(binding)  # the first run allocates the output; later runs reuse it
        output = binding.get_outputs()[0]
        binding.bind_ortvalue_output(session.get_outputs()[0].name, output)

        def run() -> None:
            session.run_with_iobinding(binding)

        def refresh() -> None:
            np.copyto(data, source)

        return Runner(run, refresh, keep=[session, binding, value, output, data])


class TorchBackend(Backend):
    name = "torch"
    device = "cpu"

    def details(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "torch": torch.__version__,
            "device": self.device,
            "mode": "eager, inference_mode",
            "clock": self.clock,
        }

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...], seed: int = 0) -> Runner:
        module = module.eval().to(self.device)
        source = torch.from_numpy(_random_input(input_shape, seed)).to(self.device)
        data = source.clone()
        sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)

        def run() -> None:
            with torch.inference_mode():
                module(data)
            sync()

        def refresh() -> None:
            data.copy_(source)
            sync()

        return Runner(run, refresh, keep=[module, data])


class TorchCudaBackend(TorchBackend):
    name = "torch-cuda"
    device = "cuda"

    def __init__(self, threads: int) -> None:
        super().__init__(threads)
        if not torch.cuda.is_available():
            raise EfnasError("backend torch-cuda needs a CUDA GPU, and torch sees none on this machine")

    def details(self) -> dict[str, Any]:
        return {**super().details(), "gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda}


def get_backend(name: str, threads: int = 1) -> Backend:
    """A backend by name: ``onnxruntime``, ``torch`` or ``torch-cuda``."""
    classes = {"onnxruntime": OnnxRuntimeBackend, "torch": TorchBackend, "torch-cuda": TorchCudaBackend}
    if name not in classes:
        raise EfnasError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}")
    return classes[name](threads)

"""The checks every backend that runs an ONNX file makes before the first image: the model's metadata against
its graph (input and output names, extra inputs, output rank and channels, fixed sizes). A backend hands in the
graph's inputs and outputs as {name: dims}, a dim an int where it is fixed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from caffe2torch.input_sizes import fixed_sizes
from caffe2torch.runner.model_info import ModelInfo, check_output, model_error

Dims = Sequence[object]


def check_graph(info: ModelInfo, meta: Mapping[str, object], inputs: Mapping[str, Dims],
                outputs: Mapping[str, Dims], path) -> list[str]:
    """Check (and, for models converted before an entry was recorded, complete) `info` against the graph;
    returns the data_dim inputs to feed. ArtifactError naming `path` for a model the runner cannot run."""
    if info.input_name not in inputs:
        if "input_name" in meta or len(inputs) != 1:
            raise model_error(path, f"bad model metadata 'input_name': '{info.input_name}' is not an "
                                    f"input of the model ({', '.join(inputs)})")
        info.input_name = next(iter(inputs))
    if info.output_name not in outputs:
        if "output_name" in meta:
            raise model_error(path, f"bad model metadata 'output_name': '{info.output_name}' is not an "
                                    f"output of the model ({', '.join(outputs)})")
        info.output_name = next(iter(outputs))
    if "data_dim_inputs" not in meta:  # older models: recognise data_dim by its shape
        info.data_dim_inputs = [name for name, dims in inputs.items() if name != info.input_name
                                and list(dims[1:]) == [1, 1, 2]]
    for name in info.data_dim_inputs:  # each a real input other than the image, fed a (N, 1, 1, 2) blob
        if name == info.input_name or name not in inputs:
            what = "is the image input" if name == info.input_name else "is not an input of the model"
            raise model_error(path, f"bad model metadata 'data_dim_inputs': '{name}' {what} "
                                    f"({', '.join(inputs)})")
    others = [n for n in inputs if n != info.input_name and n not in info.data_dim_inputs]
    if others:
        raise model_error(path, f"the model takes input(s) {', '.join(others)} besides the image "
                                f"'{info.input_name}', which deeplab-run cannot supply")
    check_output(info, outputs[info.output_name], path)
    image_shape = inputs[info.input_name]
    if len(image_shape) != 4:
        raise model_error(path, f"the model's image input has shape {list(image_shape)}, not (N, 3, H, W)")
    if all(isinstance(d, int) for d in image_shape[2:]):  # an export with fixed height and width
        declared = (image_shape[2], image_shape[3])
        if info.sizes is None:
            info.sizes = fixed_sizes(*declared)  # type: ignore[arg-type]
        elif info.sizes.size_free or info.sizes.declared != declared:
            raise model_error(path, f"bad model metadata 'input_sizes': the model's input is fixed at "
                                    f"{declared[0]}x{declared[1]}")
    return [n for n in info.data_dim_inputs if n in inputs]

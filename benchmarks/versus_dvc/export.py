"""DVC stage `export`: the tiny conv net (modelbuild's own model code) → fp32 ONNX."""

import torch

from buildsys.zoo.tiny import tiny_convnet

model = tiny_convnet(seed=0, width=32)
example = torch.zeros(1, 3, 64, 64)
torch.onnx.export(model, (example,), "model.onnx", input_names=["image"],
                  output_names=["logits"], opset_version=18, dynamo=False,
                  do_constant_folding=True)

"""Benchmark models, random weights, built on the fly (no torchvision on this CPU-only machine).

Each builder returns ``(model, make_inputs)`` where ``make_inputs(batch)`` draws fresh inputs.
"""

from __future__ import annotations

import os

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, d_in=256, hidden=1024, d_out=10, layers=3):
        super().__init__()
        dims = [d_in] + [hidden] * layers
        blocks = []
        for a, b in zip(dims, dims[1:]):
            blocks += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*blocks, nn.Linear(hidden, d_out))

    def forward(self, x):
        return self.net(x)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """torchvision's ResNet-18 layout: BasicBlock x [2, 2, 2, 2], 64-512 channels, 1000 classes."""

    def __init__(self, classes=1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        h = self.blocks(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def _make_divisible(v, divisor=8):
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class SqueezeExcite(nn.Module):
    def __init__(self, channels, squeeze):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        s = nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s


class InvertedResidual(nn.Module):
    def __init__(self, cin, kernel, expanded, cout, use_se, activation, stride):
        super().__init__()
        act = nn.Hardswish if activation == "HS" else nn.ReLU
        layers = []
        if expanded != cin:
            layers += [nn.Conv2d(cin, expanded, 1, bias=False), nn.BatchNorm2d(expanded), act()]
        layers += [nn.Conv2d(expanded, expanded, kernel, stride, kernel // 2, groups=expanded, bias=False),
                   nn.BatchNorm2d(expanded), act()]
        if use_se:
            layers.append(SqueezeExcite(expanded, _make_divisible(expanded // 4)))
        layers += [nn.Conv2d(expanded, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV3Small(nn.Module):
    """torchvision's MobileNetV3-small layout (depthwise convs, squeeze-excite, hardswish), 1000 classes."""

    # cin, kernel, expanded, cout, SE, activation, stride
    CONFIG = [(16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2), (24, 3, 88, 24, False, "RE", 1),
              (24, 5, 96, 40, True, "HS", 2), (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
              (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1), (48, 5, 288, 96, True, "HS", 2),
              (96, 5, 576, 96, True, "HS", 1), (96, 5, 576, 96, True, "HS", 1)]

    def __init__(self, classes=1000):
        super().__init__()
        layers = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()]
        layers += [InvertedResidual(*c) for c in self.CONFIG]
        layers += [nn.Conv2d(96, 576, 1, bias=False), nn.BatchNorm2d(576), nn.Hardswish()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(), nn.Linear(1024, classes))

    def forward(self, x):
        h = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(h, 1))


class BertEncoder(nn.Module):
    """A transformers BertModel (random weights) returning its last hidden state."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


BERT_SIZES = {
    # hidden, layers, heads, intermediate
    "mini": (256, 4, 4, 1024),
    "minilm": (384, 6, 12, 1536),  # the shape of all-MiniLM-L6, a common sentence encoder
    "base": (768, 12, 12, 3072),
}


def _randomize_norms(model: nn.Module) -> nn.Module:
    """Fresh BatchNorm statistics and affine parameters: default ones (mean 0, var 1) hide errors."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model


def build(name: str, *, image_size: int = 224, bert_size: str = "minilm", seq: int = 128):
    """``(model, make_inputs, info)`` for one benchmark model."""
    torch.manual_seed(0)
    if name == "mlp":
        model = MLP()
        return model.eval(), (lambda b: (torch.randn(b, 256),)), "256-1024x3-10"
    if name == "resnet18":
        return (_randomize_norms(ResNet18()).eval(), (lambda b: (torch.randn(b, 3, image_size, image_size),)),
                f"3x{image_size}x{image_size}")
    if name == "mobilenetv3s":
        return (_randomize_norms(MobileNetV3Small()).eval(),
                (lambda b: (torch.randn(b, 3, image_size, image_size),)), f"3x{image_size}x{image_size}")
    if name == "bert":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import BertConfig, BertModel

        hidden, layers, heads, inter = BERT_SIZES[bert_size]
        config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, intermediate_size=inter, max_position_embeddings=512)
        model = BertEncoder(BertModel(config, add_pooling_layer=False)).eval()

        def inputs(b):
            ids = torch.randint(1000, 30000, (b, seq))
            mask = torch.ones(b, seq, dtype=torch.int64)
            mask[:, seq - seq // 8:] = 0  # padding at the end, as real batches have
            return ids, mask
        return model, inputs, f"{bert_size} (h{hidden} L{layers} H{heads}), seq {seq}"
    raise KeyError(f"no benchmark model {name!r}; choose mlp, resnet18, mobilenetv3s, bert")

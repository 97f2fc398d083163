"""An independent re-statement of the SACT authors' TF graphs (mfigurnov/sact: cifar_model.py,
imagenet_model.py, resnet_act.py, act.py), written op by op from their code on the raw TF
variables (NHWC maps, HWIO kernels, TF names), sharing nothing with models/ or importers/.
Tests compare the imported models with it, beside the fixtures that their own code produced.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

EPS_ACT = 0.01


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


def _same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    out = (n + s - 1) // s
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def conv(x, kernel, bias=None, stride=1, padding="SAME"):
    """tf.nn.conv2d on NHWC x with an HWIO kernel; padding 'SAME', 'VALID' or explicit."""
    k = kernel.shape[0]
    x = x.permute(0, 3, 1, 2)
    if padding == "SAME":
        top, bottom = _same_pads(x.shape[2], k, stride)
        left, right = _same_pads(x.shape[3], k, stride)
        x = F.pad(x, (left, right, top, bottom))
    y = F.conv2d(x, _t(kernel).permute(3, 2, 0, 1), None if bias is None else _t(bias), stride)
    return y.permute(0, 2, 3, 1)


def max_pool_same(x, k, s):
    x = x.permute(0, 3, 1, 2)
    top, bottom = _same_pads(x.shape[2], k, s)
    left, right = _same_pads(x.shape[3], k, s)
    x = F.pad(x, (left, right, top, bottom), value=-float("inf"))
    return F.max_pool2d(x, k, s).permute(0, 2, 3, 1)


class Graph:
    def __init__(self, variables: dict, kind: str, model_type: str):
        self.v = variables
        self.kind = kind  # "cifar" or "imagenet"
        self.model_type = model_type  # "vanilla", "act", "sact"
        self.scope = "resnet_residual" if kind == "cifar" else "resnet_v2"
        self.bn_eps = 1e-3 if kind == "cifar" else 1e-5

    def act(self, x):
        return torch.maximum(x, 0.1 * x) if self.kind == "cifar" else torch.relu(x)

    def bn(self, x, name, activation=True):
        v = self.v
        y = (x - _t(v[name + "/moving_mean"])) / torch.sqrt(_t(v[name + "/moving_variance"]) + self.bn_eps)
        y = y * _t(v[name + "/gamma"]) + _t(v[name + "/beta"])
        return self.act(y) if activation else y

    def conv_bn(self, x, name, stride=1, padding="SAME"):
        """slim.conv2d under the arg scope: conv without bias, its normalizer slim.batch_norm,
        then its activation_fn. In the CIFAR arg scope slim.batch_norm has an activation_fn
        (leaky ReLU) of its own, so the activation runs twice there."""
        y = self.bn(conv(x, self.v[name + "/weights"], None, stride, padding), name + "/BatchNorm")
        return self.act(y) if self.kind == "cifar" else y

    # -- units --------------------------------------------------------------------------------
    def cifar_unit(self, x, prefix, depth, stride, activate_before_residual, mask):
        depth_in = x.shape[-1]
        preact = self.bn(x, prefix + "/preact")
        shortcut = preact if activate_before_residual else x
        out = self.conv_bn(preact, prefix + "/conv1", stride)
        out = conv(out, self.v[prefix + "/conv2/weights"], self.v[prefix + "/conv2/biases"])
        if depth_in != depth:
            shortcut = F.avg_pool2d(shortcut.permute(0, 3, 1, 2), stride, stride).permute(0, 2, 3, 1)
            pad = (depth - depth_in) // 2
            shortcut = F.pad(shortcut, (pad, pad))
        if mask is not None:
            out = out * mask
        return shortcut + out

    def imagenet_unit(self, x, prefix, depth, width, stride, mask):
        v = self.v
        preact = self.bn(x, prefix + "/preact")  # activation_fn=relu
        if depth == x.shape[-1]:
            shortcut = x[:, ::stride, ::stride, :]
        else:
            shortcut = conv(preact, v[prefix + "/shortcut/weights"], v[prefix + "/shortcut/biases"], stride)
        out = self.conv_bn(preact, prefix + "/conv1")
        if stride == 1:
            out = self.conv_bn(out, prefix + "/conv2")
        else:  # conv2d_same: explicit symmetric padding, then VALID
            pad = (3 - 1) // 2
            out = F.pad(out, (0, 0, pad, 3 - 1 - pad, pad, 3 - 1 - pad))
            out = self.conv_bn(out, prefix + "/conv2", stride, padding="VALID")
        out = conv(out, v[prefix + "/conv3/weights"], v[prefix + "/conv3/biases"])
        if mask is not None:
            out = out * mask
        return shortcut + out

    def halting(self, state, prefix):
        v = self.v
        p = prefix + "/halting_proba"
        # In the CIFAR arg scope slim.batch_norm carries leaky ReLU; in slim's ResNet scope none.
        with_act = self.kind == "cifar"
        pooled = state.mean(dim=(1, 2), keepdim=True)
        if self.model_type == "act":
            g = self.bn(pooled, p + "/global_bn", with_act)
            return torch.sigmoid(conv(g, v[p + "/global_conv/weights"], v[p + "/global_conv/biases"]))[:, 0, 0, 0]
        local = self.bn(state, p + "/local_bn", with_act)
        logit = conv(local, v[p + "/local_conv/weights"], v[p + "/local_conv/biases"])
        logit = logit + conv(self.bn(pooled, p + "/global_bn", with_act), v[p + "/global_conv/weights"])
        return torch.sigmoid(logit)[..., 0]

    # -- blocks -------------------------------------------------------------------------------
    def blocks(self):
        names = {n.split("/")[1] for n in self.v if n.startswith(self.scope + "/block")}
        out = []
        for name in sorted(names, key=lambda n: int(n.replace("block_", "").replace("block", ""))):
            units = {int(n.split("/")[2][5:]) for n in self.v if n.startswith(f"{self.scope}/{name}/unit_")}
            out.append((name, max(units)))
        return out

    def run_block(self, x, index, name, n_units):
        results = {}
        if self.kind == "cifar":
            base = self.v[self.scope + "/Conv/weights"].shape[-1]
            depth, stride = base * 2**index, 1 if index == 0 else 2

            def unit(state, u, mask):
                return self.cifar_unit(state, f"{self.scope}/{name}/unit_{u + 1}/residual", depth,
                                       stride if u == 0 else 1, index == 0 and u == 0, mask)
        else:
            width = self.v[f"{self.scope}/block1/unit_1/bottleneck_v2/conv1/weights"].shape[-1] * 2**index
            stride = 1 if index == 0 else 2

            def unit(state, u, mask):
                return self.imagenet_unit(state, f"{self.scope}/{name}/unit_{u + 1}/bottleneck_v2", 4 * width, width,
                                          stride if u == 0 else 1, mask)

        if self.model_type == "vanilla":
            for u in range(n_units):
                x = unit(x, u, None)
            return x, results
        # act.spatially_adaptive_computation_time (per position) or the same loop per image
        # (act.adaptive_computation_time gives the same numbers: the units after the halting
        # one get zero weight, and the ones before it run on every image anyway).
        outputs = None
        state = x
        for u in range(n_units):
            if u == 0:
                state = unit(state, 0, None)
                shape = state.shape[:3] if self.model_type == "sact" else state.shape[:1]
                cumsum = torch.zeros(shape, dtype=torch.float64)
                finished = torch.zeros(shape, dtype=torch.bool)
                remainder = torch.ones(shape, dtype=torch.float64)
                ponder = torch.ones(shape, dtype=torch.float64)
                num_units = torch.zeros(shape, dtype=torch.long)
                distribs = []
            else:
                mask = (~finished).to(torch.float64)
                mask = mask[..., None] if self.model_type == "sact" else mask[:, None, None, None]
                state = unit(state, u, mask)
            if u < n_units - 1:
                h = self.halting(state, f"{self.scope}/{name}/unit_{u + 1}")
            else:
                h = torch.ones(shape, dtype=torch.float64)
            cumsum = cumsum + h
            cur_finished = cumsum >= 1 - EPS_ACT
            h = torch.where(cur_finished, torch.zeros_like(h), h)
            just = ~finished & cur_finished
            distrib = torch.where(just, remainder, h)
            ponder = ponder + torch.where(cur_finished, torch.where(just, remainder, torch.zeros_like(h)), torch.ones_like(h))
            num_units = num_units + (~finished).long()
            weight = distrib[..., None] if self.model_type == "sact" else distrib[:, None, None, None]
            outputs = state * weight if outputs is None else outputs + state * weight
            remainder = remainder - h
            finished = cur_finished
            distribs.append(distrib)
        if self.model_type == "act":  # per image -> broadcast over positions, as our trace does
            hw = outputs.shape[1:3]
            ponder = ponder[:, None, None].expand(-1, *hw)
            num_units = num_units[:, None, None].expand(-1, *hw)
            distribs = [d[:, None, None].expand(-1, *hw) for d in distribs]
        results = {"ponder_cost": ponder, "num_units": num_units, "halting_distribution": torch.stack(distribs, -1)}
        return outputs, results

    def __call__(self, images: np.ndarray) -> dict:
        """images NHWC (preprocessed) -> logits and per-block ponder_cost / num_units /
        halting_distribution (float64)."""
        v, s = self.v, self.scope
        x = _t(images)
        if self.kind == "cifar":
            x = conv(x, v[s + "/Conv/weights"], v[s + "/Conv/biases"])
        else:
            pad = (7 - 1) // 2  # conv2d_same, stride 2: explicit symmetric padding, VALID
            x = F.pad(x, (0, 0, pad, 7 - 1 - pad, pad, 7 - 1 - pad))
            x = conv(x, v[s + "/conv1/weights"], v[s + "/conv1/biases"], 2, padding="VALID")
            x = max_pool_same(x, 3, 2)
        out = {"blocks": {}}
        for index, (name, n_units) in enumerate(self.blocks()):
            x, results = self.run_block(x, index, name, n_units)
            out["blocks"][name] = results
        if self.kind == "cifar":
            x = self.bn(x.mean(dim=(1, 2), keepdim=True), s + "/BatchNorm")
        else:
            x = self.bn(x, s + "/postnorm").mean(dim=(1, 2), keepdim=True)
        out["logits"] = conv(x, v[s + "/logits/weights"], v[s + "/logits/biases"])[:, 0, 0, :]
        return out

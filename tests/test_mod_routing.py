"""bench/mod_routing.py: the predictor-vs-top-k measure of a Mixture-of-Depths checkpoint, against
the model's own traces and a by-hand cross-entropy."""
import math

import torch
import torch.nn.functional as F

from bench import mod_routing
from ponderscope.core.workloads import BytesLM
from ponderscope.models import create_model, save_checkpoint
from ponderscope.models.sparse import executing

from conftest import require_data


def test_shares_agreement_and_bits_match_the_traces(tmp_path):
    torch.manual_seed(0)
    model = create_model("mod", dim=32, heads=2, mlp_ratio=2.0, depth=4, context=32, capacity=0.25).eval()
    save_checkpoint(model, tmp_path / "mod", {"task": {"name": "bytes-lm"}, "dataset": "jargon"})
    result = require_data(mod_routing.measure, str(tmp_path / "mod"), limit=640)

    stream = BytesLM("jargon", torch.device("cpu"), seq_len=32).eval_windows(640)
    n = (len(stream) - 1) // 32
    x, y = stream[: n * 32].view(n, 32), stream[1 : n * 32 + 1].view(n, 32)
    with torch.no_grad(), executing("masked"):
        causal = model.trace(x)
        model.routing = "top-k"
        look_ahead = model.trace(x)
        model.routing = "predictor"
    assert result["bytes"] == n * 32 == 640
    routed_layers = [i for i, routed in enumerate(model.routed) if routed]
    assert [r["layer"] for r in result["layers"]] == [model.token_layer_names[i] for i in routed_layers]
    for row, index in zip(result["layers"], routed_layers):
        by_predictor, by_top_k = causal.token_layers[..., index], look_ahead.token_layers[..., index]
        assert math.isclose(row["predictor_share"], float(by_predictor.float().mean()), abs_tol=1e-6)
        assert math.isclose(row["top_k_share"], 0.25, abs_tol=1e-6)  # 8 of every 32 bytes
        if index == routed_layers[0]:  # the first routed layer reads the same states under both rules
            assert math.isclose(row["agreement"], float((by_predictor == by_top_k).float().mean()), abs_tol=1e-6)
        assert 0.0 <= row["agreement"] <= 1.0
    bits = lambda trace: float(F.cross_entropy(trace.logits.reshape(-1, 256), y.reshape(-1))) / math.log(2)
    assert math.isclose(result["bits_per_byte_predictor"], bits(causal), rel_tol=1e-5)
    assert math.isclose(result["bits_per_byte_top_k"], bits(look_ahead), rel_tol=1e-5)
    assert model.routing == "predictor"
    text = mod_routing.markdown(result)
    assert f"{100 * result['layers'][0]['agreement']:.1f}%" in text and "| routed layer |" in text

"""The promotion gate's rule."""

from training.registry import GateConfig, compare, fusion_f1


def test_better_mean_is_promoted() -> None:
    d = compare({"a": 0.8, "b": 0.7}, {"a": 0.7, "b": 0.7}, GateConfig())
    assert d["promoted"] and d["mean_f1"] == {"challenger": 0.75, "champion": 0.7}


def test_equal_is_not_promoted() -> None:
    d = compare({"a": 0.7}, {"a": 0.7}, GateConfig())
    assert not d["promoted"] and "not above" in d["reason"]


def test_margin_is_required() -> None:
    assert not compare({"a": 0.72}, {"a": 0.7}, GateConfig(margin=0.05))["promoted"]
    assert compare({"a": 0.76}, {"a": 0.7}, GateConfig(margin=0.05))["promoted"]


def test_a_label_falling_too_far_blocks_promotion() -> None:
    d = compare({"a": 0.95, "b": 0.5}, {"a": 0.6, "b": 0.7}, GateConfig(max_label_drop=0.05))
    assert not d["promoted"] and "'b'" in d["reason"]


def test_fusion_f1_reads_flat_metric_names() -> None:
    metrics = {
        "test/fusion/damaged/macro_f1": 0.7,
        "test/fusion/damaged/accuracy": 0.9,
        "test/ablation/only_text/damaged/macro_f1": 0.5,
        "val/fusion/damaged/macro_f1": 0.1,
    }
    assert fusion_f1(metrics) == {"damaged": 0.7}

"""The operator's per-GrokDeployment status metrics (what dashboards and alert rules read replicas, conditions
and the phase from), in its real exposition."""

from prometheus_client import REGISTRY, generate_latest

from grok_operator.control import metrics


def exposition() -> str:
    return generate_latest(REGISTRY).decode()


def test_written_status_is_exported_and_forgotten_with_the_grokdeployment():
    status = {
        "replicas": 2,
        "readyReplicas": 1,
        "phase": "Progressing",
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "ReplicasNotReady"},
            {"type": "AutoscalingActive", "status": "False", "reason": "MetricMissing"},
        ],
    }
    metrics.GROKDEPLOYMENTS.record("team-a", "grok", 3, status)
    text = exposition()
    labels = 'grokdeployment="grok",grokdeployment_namespace="team-a"'
    for line in (
        f'grok_operator_grokdeployment_replicas{{{labels},kind="desired"}} 3.0',
        f'grok_operator_grokdeployment_replicas{{{labels},kind="current"}} 2.0',
        f'grok_operator_grokdeployment_replicas{{{labels},kind="ready"}} 1.0',
        f'grok_operator_grokdeployment_condition{{{labels},reason="ReplicasNotReady",status="False",'
        'type="Ready"} 1.0',
        f'grok_operator_grokdeployment_condition{{{labels},reason="MetricMissing",status="False",'
        'type="AutoscalingActive"} 1.0',
        f'grok_operator_grokdeployment_phase{{{labels},phase="Progressing"}} 1.0',
    ):
        assert line in text, text
    # A later write replaces the series: a condition's old reason does not linger.
    status["conditions"][1] = {"type": "AutoscalingActive", "status": "True", "reason": "Evaluating"}
    metrics.GROKDEPLOYMENTS.record("team-a", "grok", 3, {**status, "phase": "Ready", "readyReplicas": 3})
    text = exposition()
    assert "MetricMissing" not in text and 'phase="Progressing"' not in text
    assert f'grok_operator_grokdeployment_replicas{{{labels},kind="ready"}} 3.0' in text
    metrics.GROKDEPLOYMENTS.forget("team-a", "grok")
    assert 'grokdeployment="grok"' not in exposition()


def test_scaling_decisions_are_counted_per_grokdeployment_and_forgotten_with_it():
    metrics.scaled("team-a", "grok", "up")
    metrics.scaled("team-a", "grok", "up")
    metrics.scaled("team-a", "grok", "down")
    metrics.scaled("team-b", "grok", "up")
    text = exposition()
    for line in (
        'grok_operator_scaling_decisions_total{direction="up",grokdeployment="grok",'
        'grokdeployment_namespace="team-a"} 2.0',
        'grok_operator_scaling_decisions_total{direction="down",grokdeployment="grok",'
        'grokdeployment_namespace="team-a"} 1.0',
        'grok_operator_scaling_decisions_total{direction="up",grokdeployment="grok",'
        'grokdeployment_namespace="team-b"} 1.0',
    ):
        assert line in text, text
    # The GrokDeployment's deletion (grokdeployment_event) forgets its decisions, not another one's.
    metrics.GROKDEPLOYMENTS.forget("team-a", "grok")
    text = exposition()
    assert 'grokdeployment_namespace="team-a"' not in text
    assert 'grokdeployment_namespace="team-b"} 1.0' in text
    metrics.GROKDEPLOYMENTS.forget("team-b", "grok")
    metrics.GROKDEPLOYMENTS.forget("team-b", "grok")  # twice, or never scaled: nothing to forget, no error

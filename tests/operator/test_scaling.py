"""The autoscaler's decisions: table-driven cases and properties (bounds, no flapping, stabilization)."""

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from grok_operator.scale.decide import History, Observation, Policy, decide, raw_recommendation

POLICY = Policy(
    min_replicas=1,
    max_replicas=10,
    target=4,
    tolerance=0.1,
    up_window=30,
    down_window=300,
    max_up_step=2,
    max_down_step=1,
)


def run(policy, steps, replicas=2, ready=None, start=0.0, every=15.0, history=None):
    """Feeds (metric_total) per evaluation; applies each decision; returns the replica trajectory."""
    history = history or History()
    trajectory = []
    for i, total in enumerate(steps):
        obs = Observation(
            time=start + i * every,
            replicas=replicas,
            ready=replicas if ready is None else ready,
            metric_total=total,
        )
        replicas = decide(policy, obs, history).replicas
        trajectory.append(replicas)
    return trajectory


def test_hpa_formula_for_sum_and_average_metrics():
    assert raw_recommendation(POLICY, ready=2, metric_total=20) == (5, 10.0)  # 20 waiting / 4 per replica
    kv = Policy(1, 10, metric="kvCacheUsage", target=0.8)
    assert raw_recommendation(kv, ready=4, metric_total=0.95)[0] == 5  # ceil(4 * 0.95 / 0.8)
    assert raw_recommendation(POLICY, ready=3, metric_total=12.5)[0] == 3  # 4.17 per replica: within 10%


def test_sustained_load_scales_up_after_the_window_by_at_most_the_step():
    trajectory = run(POLICY, [40] * 6, replicas=2)
    assert trajectory[:2] == [2, 2]  # t=0 and t=15: the 30 s window has not filled
    assert trajectory[2] == 4  # t=30: +2 at most (10 wanted)
    assert trajectory[-1] == 10 and max(trajectory) == 10


def test_a_spike_shorter_than_the_window_does_nothing():
    assert run(POLICY, [8, 40, 8, 8, 40, 8, 8], replicas=2) == [2] * 7


def test_scale_down_waits_for_the_whole_down_window_and_steps_by_one():
    trajectory = run(POLICY, [0.0] * 30, replicas=4)  # idle, evaluated every 15 s for 7.5 minutes
    first_change = next(i for i, r in enumerate(trajectory) if r != 4)
    assert first_change * 15 >= 300
    assert all(a - b <= 1 for a, b in zip([4, *trajectory], trajectory, strict=False))
    assert trajectory[-1] < 4


def test_missing_metric_keeps_the_replicas_within_the_bounds():
    decision = decide(POLICY, Observation(time=0, replicas=3, ready=3, metric_total=None), History())
    assert decision.replicas == 3 and "no metric data" in decision.reason


def test_the_bounds_hold_without_metric_data():
    # Below minReplicas there may be no pods at all, hence no series: waiting for data would wait forever.
    # HPA enforces its bounds before it looks at metrics too.
    raised = dataclasses.replace(POLICY, min_replicas=2)
    up = decide(raised, Observation(time=0, replicas=1, ready=1, metric_total=None), History())
    assert up.replicas == 2 and "minReplicas" in up.reason
    down = decide(POLICY, Observation(time=0, replicas=20, ready=20, metric_total=None), History())
    assert down.replicas == 10 and "maxReplicas" in down.reason


def test_scaled_to_zero_by_hand_pauses_the_autoscaler():
    # As with HPA: replicas 0 set by hand means off, with or without data, until someone scales up again.
    for total in (None, 0.0, 100.0):
        d = decide(POLICY, Observation(time=0, replicas=0, ready=0, metric_total=total), History())
        assert d.replicas == 0 and "paused" in d.reason


def test_starting_replicas_block_a_second_scale_up_for_the_same_demand():
    history = History()
    for t in (0, 15, 30):
        decide(POLICY, Observation(time=t, replicas=2, ready=2, metric_total=40), history)
    # Scaled to 4 at t=30; two replicas load for minutes while the queue keeps growing.
    for t in range(45, 300, 15):
        d = decide(
            POLICY,
            Observation(
                time=t,
                replicas=4,
                ready=2,
                metric_total=60,
                starting_ages=(t - 30, t - 30),
                startup_seconds=240,
            ),
            history,
        )
        assert d.replicas == 4, d.reason
        assert "still starting" in d.reason
    # Past 1.5x the measured start-up time, a replica that still is not ready no longer holds things back.
    d = decide(
        POLICY,
        Observation(
            time=420, replicas=4, ready=2, metric_total=60, starting_ages=(390, 390), startup_seconds=240
        ),
        history,
    )
    assert d.replicas == 6


def test_no_replica_ready_means_wait():
    d = decide(POLICY, Observation(time=0, replicas=3, ready=0, metric_total=0), History())
    assert d.replicas == 3


@settings(max_examples=200, deadline=None)
@given(
    minimum=st.integers(1, 5),
    span=st.integers(0, 10),
    replicas=st.integers(0, 30),
    values=st.lists(st.one_of(st.none(), st.floats(0, 500)), min_size=1, max_size=40),
    ready_fraction=st.floats(0, 1),
)
def test_bounds_always_hold_and_missing_data_within_them_changes_nothing(
    minimum, span, replicas, values, ready_fraction
):
    policy = Policy(min_replicas=minimum, max_replicas=minimum + span, target=4, up_window=0, down_window=0)
    history = History()
    for i, value in enumerate(values):
        ready = int(replicas * ready_fraction)
        d = decide(
            policy, Observation(time=i * 15.0, replicas=replicas, ready=ready, metric_total=value), history
        )
        if replicas == 0:
            assert d.replicas == 0  # zero set by hand is off
        elif value is None and policy.min_replicas <= replicas <= policy.max_replicas:
            assert d.replicas == replicas  # never act on missing data within the bounds
        else:
            assert policy.min_replicas <= d.replicas <= policy.max_replicas
        replicas = d.replicas


@settings(max_examples=200, deadline=None)
@given(replicas=st.integers(1, 10), deviations=st.lists(st.floats(-0.09, 0.09), min_size=5, max_size=60))
def test_a_steady_metric_within_the_tolerance_never_scales(replicas, deviations):
    totals = [replicas * POLICY.target * (1 + d) for d in deviations]
    assert run(POLICY, totals, replicas=replicas) == [replicas] * len(totals)


@settings(max_examples=100, deadline=None)
@given(high=st.floats(9, 100), windows=st.tuples(st.integers(0, 120), st.integers(0, 900)))
def test_scale_up_never_happens_before_the_up_window_has_passed(high, windows):
    up, down = windows
    policy = Policy(1, 50, target=4, up_window=up, down_window=down)
    trajectory = run(policy, [high] * 20, replicas=1, every=10)
    first_up = next((i for i, r in enumerate(trajectory) if r > 1), None)
    assert first_up is not None and first_up * 10 >= up


def test_a_replica_stuck_starting_does_not_block_scale_down():
    history = History()
    policy = Policy(1, 10, target=4, down_window=30)
    decisions = [
        decide(
            policy,
            Observation(
                time=t, replicas=4, ready=3, metric_total=0, starting_ages=(900 + t,), startup_seconds=120
            ),
            history,
        )
        for t in range(0, 60, 15)
    ]
    assert decisions[-1].replicas == 3
    fresh = decide(
        policy,
        Observation(time=75, replicas=3, ready=2, metric_total=0, starting_ages=(10,), startup_seconds=120),
        history,
    )
    assert fresh.replicas == 3 and "still starting" in fresh.reason


def test_a_step_just_inside_the_window_does_not_count_as_the_whole_window():
    history = History()
    policy = Policy(1, 10, target=4, up_window=6)
    for t, total in ((0, 4), (2, 4), (4, 4), (5, 40), (7, 40), (9, 40)):
        d = decide(policy, Observation(time=t, replicas=1, ready=1, metric_total=total), history)
        assert d.replicas == 1, (t, d.reason)  # at t=9 the window [3, 9] began with the low reading of t=2..4
    assert decide(policy, Observation(time=11.5, replicas=1, ready=1, metric_total=40), history).replicas == 3


ZERO = dataclasses.replace(POLICY, min_replicas=0, scale_to_zero_after=600)


def test_a_held_request_starts_a_replica_at_the_next_evaluation():
    quiet = Observation(time=0, replicas=0, ready=0, metric_total=None, held=0, recent_requests=0)
    idle = decide(ZERO, quiet, History())
    assert idle.replicas == 0 and "first request" in idle.reason
    # No stabilization window: the request already waits in the router through the whole cold start.
    woken = decide(ZERO, Observation(time=15, replicas=0, ready=0, metric_total=None, held=3,
                                     recent_requests=3), History())
    assert woken.replicas == 1 and "held" in woken.reason


def test_scale_to_zero_after_a_whole_window_without_requests_as_seen_by_the_autoscaler():
    history = History()

    def at(t, recent, held=0, ready=1, starting=()):
        return decide(ZERO, Observation(time=t, replicas=1, ready=ready, metric_total=0.0, held=held,
                                        recent_requests=recent, starting_ages=starting), history).replicas

    # Quiet from t=0 (the router's counters say nothing of the time before the autoscaler saw them).
    assert [at(t, 0) for t in range(0, 600, 15)] == [1] * 40
    assert at(600, 0) == 0
    history.idle_since = None
    assert at(0, 0) == 1 and at(300, 2) == 1  # a request restarts the count
    assert at(400, 0) == 1 and at(999, 0) == 1 and at(1000, 0) == 0
    history.idle_since = None
    assert at(0, 0) == 1 and at(700, 0, held=1) == 1  # something held: never to zero
    assert at(700, 0, ready=0, starting=(30.0,)) == 1  # a replica still starting: not now


def test_no_router_series_never_scales_to_zero_and_a_warm_floor_stays():
    history = History()
    for t in range(0, 3600, 15):
        obs = Observation(time=t, replicas=1, ready=1, metric_total=0.0, held=None, recent_requests=0)
        assert decide(ZERO, obs, history).replicas == 1
    floor = History()
    for t in range(0, 3600, 15):
        obs = Observation(time=t, replicas=1, ready=1, metric_total=0.0, held=0, recent_requests=0)
        assert decide(POLICY, obs, floor).replicas == 1  # minReplicas 1: a warm floor, whatever the idle


def test_the_last_start_up_is_the_newest_replica_to_turn_ready():
    from grok_operator.observe.pods import last_startup_seconds

    def pod(created, ready_at=None):
        conditions = [{"type": "Ready", "status": "True", "lastTransitionTime": ready_at}] if ready_at else []
        return {"created": created, "status": {"conditions": conditions}}

    assert last_startup_seconds([pod("2026-12-01T10:00:00Z")]) is None  # still starting
    pods = [pod("2026-12-01T10:00:00Z", "2026-12-01T10:05:00Z"),  # 300 s, Ready first
            pod("2026-12-01T10:10:00Z", "2026-12-01T10:12:30Z"),  # 150 s, Ready last
            pod("2026-12-01T10:20:00Z")]
    assert last_startup_seconds(pods) == 150

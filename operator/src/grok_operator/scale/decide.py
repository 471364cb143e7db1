"""Autoscaling decisions (pure): from a metric, the replicas serving and starting, and the recent
recommendations, to the replicas wanted now and why.

The shape follows the Horizontal Pod Autoscaler, with two changes for replicas that cost 8 GPUs and
take minutes to load:
- only Ready replicas count as serving capacity, and while replicas are still starting (for less than
  the start-up time measured on recent replicas, with a margin) no further scale-up is made for the
  same demand;
- separate stabilization windows: a scale-up happens only when every recommendation over the up window
  asked for more (a spike shorter than the window does nothing); a scale-down only to the highest
  recommendation over the (longer) down window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from grok_operator.api.spec import AutoscalingSpec

METRICS = {
    # name: (PromQL over the deployment's series, how the value relates to replicas)
    "waitingRequestsPerReplica": "sum",
    "generatedTokensPerSecondPerReplica": "sum",
    "kvCacheUsage": "average",
}
STARTUP_MARGIN = 1.5  # a replica is "still starting as expected" until 1.5x the measured start-up time
DEFAULT_STARTUP_SECONDS = 600.0  # before any replica has been seen starting


_SPEC = AutoscalingSpec  # the defaults, written once there


@dataclass(frozen=True)
class Policy:
    """spec.autoscaling, in the decision's terms."""

    min_replicas: int
    max_replicas: int
    metric: str = _SPEC.metric
    target: float = _SPEC.target
    tolerance: float = _SPEC.tolerance
    up_window: float = _SPEC.scale_up_stabilization_seconds
    down_window: float = _SPEC.scale_down_stabilization_seconds
    max_up_step: int = _SPEC.max_scale_up_step
    max_down_step: int = _SPEC.max_scale_down_step
    scale_to_zero_after: float = _SPEC.scale_to_zero_after_seconds  # with min_replicas 0: idle seconds

    @classmethod
    def from_spec(cls, spec: AutoscalingSpec) -> Policy:
        return cls(
            min_replicas=spec.min_replicas,
            max_replicas=spec.max_replicas,
            metric=spec.metric,
            target=spec.target,
            tolerance=spec.tolerance,
            up_window=spec.scale_up_stabilization_seconds,
            down_window=spec.scale_down_stabilization_seconds,
            max_up_step=spec.max_scale_up_step,
            max_down_step=spec.max_scale_down_step,
            scale_to_zero_after=spec.scale_to_zero_after_seconds,
        )


@dataclass(frozen=True)
class Observation:
    """What the autoscaler sees at one evaluation."""

    time: float
    replicas: int  # spec.replicas now
    ready: int  # replicas serving
    metric_total: (
        float | None
    )  # sum over replicas ("sum" metrics) or the average ("average" metrics); None: no data
    starting_ages: tuple[float, ...] = ()  # seconds since each not-yet-ready replica was created
    startup_seconds: float = DEFAULT_STARTUP_SECONDS  # measured on recent replicas
    # From the router (scale to zero): calls waiting for a replica now, and calls seen over the last
    # scale_to_zero_after seconds (finished, in flight or held). None: no router series (never to zero).
    held: float | None = None
    recent_requests: float | None = None


@dataclass(frozen=True)
class Decision:
    replicas: int  # what spec.replicas should be
    recommendation: int | None  # the raw recommendation recorded for stabilization (None: no data)
    per_replica: float | None
    reason: str

    def changes(self, current: int) -> bool:
        return self.replicas != current


@dataclass
class History:
    """Recent recommendations (time, replicas), trimmed to the longest window."""

    entries: list[tuple[float, int]] = field(default_factory=list)
    # Since when every evaluation has seen no request (scale to zero); None while requests come.
    idle_since: float | None = None

    def add(self, when: float, replicas: int, keep: float) -> None:
        self.entries.append((when, replicas))
        older = [i for i, (t, _) in enumerate(self.entries) if t < when - keep]
        if older:  # keep the newest entry past the longest window: it shows the window is covered
            self.entries = self.entries[older[-1] :]

    def within(self, now: float, window: float) -> list[int]:
        """The recommendations in force over the whole window: those made in it, and the one made before
        it that still held at its start (so a step just inside the window does not count as the window)."""
        start = now - window
        inside = [r for t, r in self.entries if t > start]
        before = [r for t, r in self.entries if t <= start]
        return before[-1:] + inside

    def covers(self, now: float, window: float) -> bool:
        """Whether the history reaches back a whole window (after a restart it does not, yet)."""
        return bool(self.entries) and self.entries[0][0] <= now - window


def raw_recommendation(policy: Policy, ready: int, metric_total: float) -> tuple[int, float]:
    """Replicas that would bring the metric per serving replica to the target (HPA's formula), and
    that per-replica value. Within the tolerance the answer is `ready` itself."""
    kind = METRICS[policy.metric]
    if kind == "sum":
        per_replica = metric_total / max(ready, 1)
        wanted = metric_total / policy.target
    else:
        per_replica = metric_total
        wanted = ready * metric_total / policy.target
    if ready > 0 and abs(per_replica / policy.target - 1) <= policy.tolerance:
        return ready, per_replica
    return math.ceil(wanted - 1e-9), per_replica


def decide(policy: Policy, obs: Observation, history: History) -> Decision:
    """The replicas to have now. Records the raw recommendation in `history`."""
    current = obs.replicas
    # The metric never takes the last replica away: only a whole window without requests does (below).
    clamp = lambda n: max(policy.min_replicas, 1, min(policy.max_replicas, n))  # noqa: E731
    if current == 0:
        if policy.min_replicas > 0:
            # As with HPA, zero set by hand switches autoscaling off (no pods, nothing to measure).
            return Decision(0, None, None, "scaled to zero by hand: paused until replicas are above 0")
        if obs.held:
            # Not after a window: the request waits in the router through the whole cold start already.
            return Decision(1, None, None, f"{obs.held:g} request(s) held at zero: starting a replica")
        return Decision(0, None, None, "scaled to zero: the first request starts a replica")
    if policy.min_replicas == 0:
        # No router series (held is None): nothing says the deployment is idle, so it never goes to zero.
        idle = obs.held == 0 and obs.recent_requests == 0
        if not idle:
            history.idle_since = None
        elif history.idle_since is None:
            history.idle_since = obs.time
        # Idle for a whole window as this autoscaler saw it (a young router's counters say nothing about the
        # time before it), with every replica serving (not one just started for a request).
        if (idle and history.idle_since is not None
                and obs.time - history.idle_since >= policy.scale_to_zero_after
                and current == obs.ready and not obs.starting_ages):
            return Decision(0, None, None,
                            f"no request for {policy.scale_to_zero_after:g}s: scaling {current} -> 0")
    # The bounds hold before any data: below minReplicas there may be no pod, hence no series, to wait for.
    low, high = policy.min_replicas, policy.max_replicas
    if current < low:
        return Decision(low, None, None, f"below minReplicas: raising to {low}")
    if current > high:
        return Decision(high, None, None, f"above maxReplicas: lowering to {high}")
    if obs.metric_total is None:
        return Decision(current, None, None, "no metric data: keeping the current replicas")

    if obs.ready == 0:
        # Nothing serves: no per-replica value to speak of. Make sure something is coming up.
        want = clamp(max(current, 1))
        return Decision(want, None, None, "no replica is ready yet: waiting for them to serve")

    recommendation, per_replica = raw_recommendation(policy, obs.ready, obs.metric_total)
    # Replicas created but not ready: loading as expected (younger than the measured start-up time with a
    # margin) they will serve soon; older ones are stuck (no GPUs, crash loop) and hold nothing back.
    starting = current - obs.ready
    still_loading = [a for a in obs.starting_ages if a < obs.startup_seconds * STARTUP_MARGIN]
    history.add(obs.time, recommendation, keep=max(policy.up_window, policy.down_window))
    value = f"{per_replica:.3g} per replica (target {policy.target:g})"

    def hold(why: str) -> Decision:
        return Decision(clamp(current), recommendation, per_replica, f"{value}: {why}")

    if recommendation > current:
        if not history.covers(obs.time, policy.up_window):
            return hold(f"waiting for the {policy.up_window:g}s scale-up window to fill")
        stable_up = min(history.within(obs.time, policy.up_window))
        if stable_up <= current:
            return hold(f"not high for the whole {policy.up_window:g}s scale-up window")
        if starting > 0 and still_loading:
            return hold(
                f"{len(still_loading)} replica(s) still starting (measured start-up "
                f"{obs.startup_seconds:.0f}s); not scaling up again for the same demand"
            )
        target = clamp(min(stable_up, current + policy.max_up_step))
        return Decision(target, recommendation, per_replica, f"{value}: scaling up {current} -> {target}")

    if recommendation < current:
        if starting > 0 and still_loading:
            return hold("replicas are still starting; not scaling down meanwhile")
        if not history.covers(obs.time, policy.down_window):
            return hold(f"waiting for the {policy.down_window:g}s scale-down window to fill")
        stable_down = max(history.within(obs.time, policy.down_window))
        if stable_down >= current:
            return hold(f"not low for the whole {policy.down_window:g}s scale-down window")
        target = clamp(max(stable_down, current - policy.max_down_step))
        return Decision(target, recommendation, per_replica, f"{value}: scaling down {current} -> {target}")

    return hold("within tolerance")

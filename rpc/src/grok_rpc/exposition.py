"""Reading a Prometheus text exposition (what a `/metrics` endpoint answers) with prometheus_client's own
parser: the router reads its replicas' gauges with it, the tests, the demo and the benchmarks read whole
scrapes."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value of every sample, its labels written as Prometheus prints them (in the order
    the exposition gives them, values escaped): `x_total{a="1",b="2"}`, or the bare name without labels."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{_label_value(v)}"' for k, v in sample.labels.items())
            out[sample.name + (f"{{{labels}}}" if labels else "")] = float(sample.value)
    return out

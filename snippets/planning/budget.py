"""Budget arithmetic: replicas for a peak rate and for a time-to-first-token target, monthly cost of a
day of traffic on a fixed fleet or on an autoscaled host that may scale to zero, cost per request, and
the break-even point against a per-token API.

    python snippets/planning/budget.py --price-per-hour 1.006 --replicas 2 --requests-per-day 6000

A day of traffic has a peak window (`peak_hours` at the peak rate) and an off-peak rest that carries the
remaining requests evenly. A fixed fleet is sized for the peak and billed around the clock. An autoscaled
host runs the peak replicas through the window; off peak it runs what the rest of the traffic needs but
never fewer than its minimum, and a host that scales to zero sleeps whenever requests are further apart
than its idle timeout.

Waiting for a slot is an M/M/c queue (Erlang C): requests arrive at random (Poisson) and each of an
engine's c slots (--max-num-seqs) holds a request for its whole latency. Fixed-length requests wait
less than this exponential model says, so it errs on the safe side.
"""

import argparse
import math
from dataclasses import dataclass

HOURS_PER_MONTH = 730  # 365 x 24 / 12
DAYS_PER_MONTH = 30.4
DAY_SECONDS = 86_400
IDLE_TIMEOUT_S = 300  # how long a serverless replica stays up after a request (a typical default)


@dataclass(frozen=True)
class Traffic:
    """A day of traffic: `peak_rps` through a window of `peak_hours`, the other requests spread over the rest."""

    requests_per_day: float
    peak_rps: float
    peak_hours: float

    @property
    def offpeak_hours(self) -> float:
        return 24 - self.peak_hours

    @property
    def offpeak_requests(self) -> float:
        return max(0.0, self.requests_per_day - self.peak_rps * self.peak_hours * 3600)


def replicas_needed(
    peak_rps: float, capacity_rps: float, target_utilisation: float = 0.7, spare: int = 0
) -> int:
    """Replicas to serve the peak at the target utilisation, plus `spare` for failures."""
    return math.ceil(peak_rps / (capacity_rps * target_utilisation)) + spare


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arrival finds all `servers` busy (M/M/c), `offered_load` = rate x service time."""
    if offered_load >= servers:
        return 1.0
    blocked = 1.0  # Erlang B, by its recurrence over the number of servers
    for n in range(1, servers + 1):
        blocked = offered_load * blocked / (n + offered_load * blocked)
    busy = offered_load / servers
    return blocked / (1 - busy + busy * blocked)


def wait_quantile(
    arrival_rps: float, servers: int, service_s: float, quantile: float = 0.95
) -> float:
    """Seconds within which `quantile` of arrivals get a server: P(wait > t) = C e^(-(c/S - rate) t)."""
    waiting = erlang_c(servers, arrival_rps * service_s)
    if waiting >= 1:
        return math.inf
    if waiting <= 1 - quantile:
        return 0.0
    return math.log(waiting / (1 - quantile)) / (servers / service_s - arrival_rps)


def always_on_monthly(price_per_hour: float, replicas: int) -> float:
    """A fixed fleet: every replica billed 730 hours a month."""
    return price_per_hour * replicas * HOURS_PER_MONTH


def offpeak_replica_hours(
    traffic: Traffic,
    capacity_rps: float,
    min_replicas: int = 0,
    target_utilisation: float = 0.7,
    request_seconds: float = 0.0,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
) -> float:
    """Replica-hours billed per day outside the peak window.

    Requests further apart than the idle timeout (plus their own duration) let a replica sleep between
    them: each keeps one replica up for `idle_timeout_s + request_seconds`. Closer together, the replicas
    the off-peak rate needs stay up all the time. `min_replicas` stay up in any case."""
    hours, requests = traffic.offpeak_hours, traffic.offpeak_requests
    floor = min_replicas * hours
    if requests == 0 or hours == 0:
        return floor
    awake_per_request = idle_timeout_s + request_seconds
    if hours * 3600 / requests > awake_per_request:
        return max(floor, requests * awake_per_request / 3600)
    needed = replicas_needed(requests / (hours * 3600), capacity_rps, target_utilisation)
    return max(floor, needed * hours)


def autoscaled_monthly(
    price_per_hour: float,
    traffic: Traffic,
    peak_replicas: int,
    capacity_rps: float,
    min_replicas: int = 0,
    target_utilisation: float = 0.7,
    request_seconds: float = 0.0,
) -> float:
    """An autoscaled host: the peak replicas through the peak window, the off-peak need for the rest."""
    offpeak = offpeak_replica_hours(
        traffic, capacity_rps, min_replicas, target_utilisation, request_seconds
    )
    return price_per_hour * (peak_replicas * traffic.peak_hours + offpeak) * DAYS_PER_MONTH


def per_request(monthly: float, requests_per_day: float) -> float:
    return monthly / (requests_per_day * DAYS_PER_MONTH)


def api_monthly(
    requests_per_day: float,
    input_tokens: int,
    output_tokens: int,
    input_per_million: float,
    output_per_million: float,
) -> float:
    per_call = (input_tokens * input_per_million + output_tokens * output_per_million) / 1e6
    return per_call * requests_per_day * DAYS_PER_MONTH


def break_even_requests_per_day(
    monthly_self_hosted: float,
    input_tokens: int,
    output_tokens: int,
    input_per_million: float,
    output_per_million: float,
) -> float:
    """Daily volume above which a fixed monthly self-hosted cost beats paying per token."""
    return monthly_self_hosted / api_monthly(
        1, input_tokens, output_tokens, input_per_million, output_per_million
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--price-per-hour", type=float, required=True)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--requests-per-day", type=float, required=True)
    args = parser.parse_args()
    if args.price_per_hour < 0 or args.replicas < 1 or args.requests_per_day <= 0:
        parser.exit(2, "error: price must be >= 0, replicas >= 1, requests per day > 0\n")
    monthly = always_on_monthly(args.price_per_hour, args.replicas)
    print(
        f"${monthly:,.0f} per month, ${per_request(monthly, args.requests_per_day) * 1000:.3f} per 1,000 requests"
    )

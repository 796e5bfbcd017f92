"""Budget arithmetic: monthly cost for a traffic profile, cost per request and per 1M tokens,
scale to zero, and the break-even point against a per-token API.

    python snippets/planning/budget.py --price-per-hour 1.006 --replicas 2 --requests-per-day 6000
"""

import argparse
import math

HOURS_PER_MONTH = 730  # 365 x 24 / 12
DAYS_PER_MONTH = 30.4
DAY_SECONDS = 86_400
IDLE_TIMEOUT_S = 300  # how long a serverless replica stays up after a request (a typical default)


def replicas_needed(peak_rps: float, capacity_rps: float, target_utilisation: float = 0.7,
                    spare: int = 0) -> int:
    """Replicas to serve the peak at the target utilisation, plus `spare` for failures."""
    return math.ceil(peak_rps / (capacity_rps * target_utilisation)) + spare


def always_on_monthly(price_per_hour: float, replicas: int) -> float:
    return price_per_hour * replicas * HOURS_PER_MONTH


def scale_to_zero_monthly(price_per_hour: float, requests_per_day: float, capacity_rps: float,
                          target_utilisation: float = 0.7, request_seconds: float = 0, max_replicas: int = 1) -> float:
    """Billed replica time when replicas scale to zero: a replica stays up IDLE_TIMEOUT_S after each request,
    so with requests evenly spread it only sleeps when the gap between them is longer than that."""
    gap = DAY_SECONDS / requests_per_day
    awake_per_request = min(gap, IDLE_TIMEOUT_S + request_seconds)
    busy = requests_per_day / (capacity_rps * target_utilisation)
    billed_hours_per_day = max(busy, requests_per_day * awake_per_request) / 3600
    return price_per_hour * min(billed_hours_per_day, 24 * max_replicas) * DAYS_PER_MONTH


def per_request(monthly: float, requests_per_day: float) -> float:
    return monthly / (requests_per_day * DAYS_PER_MONTH)


def api_monthly(requests_per_day: float, input_tokens: int, output_tokens: int,
                input_per_million: float, output_per_million: float) -> float:
    per_call = (input_tokens * input_per_million + output_tokens * output_per_million) / 1e6
    return per_call * requests_per_day * DAYS_PER_MONTH


def break_even_requests_per_day(monthly_self_hosted: float, input_tokens: int, output_tokens: int,
                                input_per_million: float, output_per_million: float) -> float:
    """Daily volume above which a fixed monthly self-hosted cost beats paying per token."""
    return monthly_self_hosted / api_monthly(1, input_tokens, output_tokens, input_per_million, output_per_million)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--price-per-hour", type=float, required=True)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--requests-per-day", type=float, required=True)
    args = parser.parse_args()
    if args.price_per_hour < 0 or args.replicas < 1 or args.requests_per_day <= 0:
        parser.exit(2, "error: price must be >= 0, replicas >= 1, requests per day > 0\n")
    monthly = always_on_monthly(args.price_per_hour, args.replicas)
    print(f"${monthly:,.0f} per month, ${per_request(monthly, args.requests_per_day) * 1000:.3f} per 1,000 requests")

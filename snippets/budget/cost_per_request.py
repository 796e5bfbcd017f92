"""Turn an hourly compute price and a measured throughput into cost per request and per 1M tokens.

A server you pay for by the hour costs the same whether it is busy or idle, so the price of one
request depends on how busy you keep it: divide by throughput x utilisation, not by throughput.

    python snippets/budget/cost_per_request.py --price-per-hour 1.20 --requests-per-second 40
"""

import argparse

SECONDS_PER_HOUR = 3600


def cost_per_request(
    price_per_hour: float, requests_per_second: float, utilisation: float = 1.0
) -> float:
    """Dollars per request for a server that is busy `utilisation` of the time (0 < u <= 1)."""
    if price_per_hour < 0:
        raise ValueError("price_per_hour must be >= 0")
    if requests_per_second <= 0:
        raise ValueError("requests_per_second must be > 0")
    if not 0 < utilisation <= 1:
        raise ValueError("utilisation must be in (0, 1]")
    served_per_hour = requests_per_second * SECONDS_PER_HOUR * utilisation
    return price_per_hour / served_per_hour


def cost_per_million_tokens(
    price_per_hour: float, tokens_per_second: float, utilisation: float = 1.0
) -> float:
    """Dollars per 1M generated tokens: the unit LLM API prices are quoted in."""
    return cost_per_request(price_per_hour, tokens_per_second, utilisation) * 1_000_000


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--price-per-hour", type=float, required=True, help="dollars per hour")
    parser.add_argument(
        "--requests-per-second", type=float, required=True, help="measured throughput"
    )
    parser.add_argument("--utilisation", type=float, default=1.0, help="busy fraction, (0, 1]")
    args = parser.parse_args()
    try:
        dollars = cost_per_request(args.price_per_hour, args.requests_per_second, args.utilisation)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"${dollars * 1000:.4f} per 1,000 requests")

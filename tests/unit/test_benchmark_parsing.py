"""The benchmark harness's wrk report parser and /proc/<pid>/stat parser, on captured output."""

import pytest

from benchmarks.proc_stats import parse_stat
from benchmarks.wrk import WrkError, parse_time_us, parse_wrk_output

# wrk 4.1.0 (Debian), -t2 -c32 --latency against a local nginx.
THROUGHPUT = """\
Running 2s test @ http://127.0.0.1:18931/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   564.98us    0.85ms   8.19ms   89.12%
    Req/Sec    43.76k    21.91k  108.86k    68.29%
  Latency Distribution
     50%  177.00us
     75%  582.00us
     90%    1.53ms
     99%    4.25ms
  178599 requests in 2.10s, 25.55MB read
Requests/sec:  85067.76
Transfer/sec:     12.17MB
"""

# -t1 -c1 against a location answering 503.
NON_2XX = """\
Running 1s test @ http://127.0.0.1:18931/missing
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    57.91us  324.68us   6.43ms   98.57%
    Req/Sec    35.30k     1.37k   37.04k    63.64%
  Latency Distribution
     50%   26.00us
     75%   26.00us
     90%   28.00us
     99%  799.00us
  38545 requests in 1.10s, 6.58MB read
  Non-2xx or 3xx responses: 38545
Requests/sec:  35052.57
Transfer/sec:      5.98MB
"""

# -t1 -c2 against a server closing every other connection before answering.
SOCKET_ERRORS = """\
Running 1s test @ http://127.0.0.1:18932/
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    55.98us  210.08us   6.39ms   99.31%
    Req/Sec     7.10k     1.90k    9.37k    63.64%
  Latency Distribution
     50%   25.00us
     75%   66.00us
     90%   72.00us
     99%  151.00us
  7754 requests in 1.10s, 310.46KB read
  Socket errors: connect 0, read 15508, write 0, timeout 0
Requests/sec:   7053.16
Transfer/sec:    282.40KB
"""


def test_throughput_report_gives_totals_and_percentiles_in_microseconds():
    r = parse_wrk_output(THROUGHPUT)
    assert r.requests == 178599
    assert r.duration_s == pytest.approx(2.10)
    assert r.requests_per_s == pytest.approx(85067.76)
    assert r.latency_avg_us == pytest.approx(564.98)
    assert r.latency_max_us == pytest.approx(8190.0)
    assert r.percentiles_us == {50: 177.0, 75: 582.0, 90: 1530.0, 99: 4250.0}
    assert r.errors == 0


def test_non_2xx_responses_count_as_errors():
    r = parse_wrk_output(NON_2XX)
    assert r.non_2xx_3xx == 38545
    assert r.errors == 38545
    assert r.percentiles_us[99] == pytest.approx(799.0)


def test_socket_errors_count_as_errors():
    r = parse_wrk_output(SOCKET_ERRORS)
    assert r.socket_errors == {"connect": 0, "read": 15508, "write": 0, "timeout": 0}
    assert r.non_2xx_3xx == 0
    assert r.errors == 15508
    assert r.to_dict()["errors"] == 15508


def test_output_without_latency_distribution_is_refused():
    without = "\n".join(line for line in THROUGHPUT.splitlines() if "%  " not in line or "Latency" in line)
    with pytest.raises(WrkError):
        parse_wrk_output(without)


def test_error_output_is_refused():
    with pytest.raises(WrkError):
        parse_wrk_output("unable to connect to 127.0.0.1:18931 Connection refused\n")


@pytest.mark.parametrize(
    "text, us",
    [("139.00us", 139.0), ("1.53ms", 1530.0), ("2.10s", 2_100_000.0), ("1.00m", 60_000_000.0)],
)
def test_time_units(text, us):
    assert parse_time_us(text) == pytest.approx(us)


def test_stat_line_with_spaces_and_parentheses_in_the_command_name():
    line = (
        "4063 (nginx: (master) x) S 1 4063 4063 0 -1 4194624 112 0 0 0 7 12 0 0 20 0 1 0 "
        "98765 11476992 1418 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n"
    )
    st = parse_stat(line)
    assert (st.pid, st.ppid, st.utime, st.stime, st.starttime) == (4063, 1, 7, 12, 98765)


def test_sidecar_config_extra_is_a_yaml_mapping_merged_key_by_key():
    from benchmarks.peers import merge_config
    from benchmarks.run import parse_args
    args = parse_args(["--quick", "--sidecar-config-extra", "{telemetry: {tracing: {sample: 100%}}}"])
    assert args.sidecar_config_extra == {"telemetry": {"tracing": {"sample": "100%"}}}
    base = {"telemetry": {"access_log": {"path": None}, "tracing": {"propagate": ["w3c"]}}, "workers": 1}
    assert merge_config(base, args.sidecar_config_extra) == {
        "telemetry": {"access_log": {"path": None}, "tracing": {"propagate": ["w3c"], "sample": "100%"}},
        "workers": 1}
    with pytest.raises(SystemExit):
        parse_args(["--sidecar-config-extra", "[1, 2]"])

"""Reading Prometheus text in tests: the samples of a family, their sum over labels."""
import re


def samples(text, name):
    """{frozenset(labels): value} of the samples of `name` in Prometheus text."""
    out = {}
    for line in text.splitlines():
        m = re.match(r'^%s(?:\{(.*)\})? (\S+)$' % re.escape(name), line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
            out[labels] = float(m.group(2))
    return out


def total(text, name, **labels):
    """The sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for k, v in samples(text, name).items() if want <= k)

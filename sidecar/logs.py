"""Process logging: one line per event on stderr, with the process role and pid."""
import logging
import sys


def setup_logging(level="info"):
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, str(level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )

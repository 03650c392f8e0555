# Declarations of the OTLP span encoder; see otlp.pyx.
from fastpath.parser cimport MessageHead
from fastpath.exchange cimport ExchangeRecord

cdef bytes encode_exchange_span(int direction, const ExchangeRecord* rec, MessageHead req,
                                object upstream_host, int upstream_port, bytes client_ip,
                                const char* request_id, Py_ssize_t request_id_len,
                                const char* trace_state, Py_ssize_t trace_state_len,
                                bytes route, bytes service, bytes flags_text, double now)

"""The transport's connection protocol, fed bytes directly: what it makes of an answer that
arrives in pieces. (The transport against real servers: tests/integration/test_client_hostile_servers.py.)"""

from __future__ import annotations

import pytest

from pipelines.metastudio.transport import _Connection

PAGE = b'{"count": 0, "jobs": []}'
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(PAGE), PAGE)


@pytest.mark.parametrize("interim", [b"HTTP/1.1 100 Continue\r\n\r\n",
                                     b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"])
def test_an_interim_answer_arriving_alone_is_not_taken_for_the_answer(interim):
    conn = _Connection()
    conn.data_received(interim)
    assert not conn.head_done and conn.headers == [] and conn.error is None
    conn.data_received(ANSWER[:40])
    assert not conn.head_done
    conn.data_received(ANSWER[40:])
    assert conn.head_done and conn.complete and conn.parser.get_status_code() == 200
    assert (b"Content-Length", b"%d" % len(PAGE)) in conn.headers and b"".join(conn.body) == PAGE


def test_an_answer_that_is_not_http_is_an_error_not_a_page():
    conn = _Connection()
    conn.data_received(b"SSH-2.0-OpenSSH_9.6\r\n")
    assert conn.error is not None and not conn.head_done

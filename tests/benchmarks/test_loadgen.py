"""benchmarks/loadgen.py against servers that end connections: one that closes every kept-alive
connection after answering (llama-server does so after each stream) loses no request, and one that
hangs up halfway through an answer costs a failed request, never a second copy of it."""

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import loadgen

ANSWER = b'{"ok": true}'


class ClosesAfterAnswering(BaseHTTPRequestHandler):
    """Says Keep-Alive, answers, then closes the connection."""

    protocol_version = "HTTP/1.1"
    received = 0

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(ANSWER)))
        self.send_header("Keep-Alive", "timeout=5")
        self.end_headers()
        self.wfile.write(self.answer())
        self.close_connection = True

    def answer(self) -> bytes:
        return ANSWER

    def log_message(self, *args):
        pass


class HangsUpMidAnswer(ClosesAfterAnswering):
    """Promises the whole answer, sends half of it and hangs up."""

    received = 0

    def answer(self) -> bytes:
        return ANSWER[: len(ANSWER) // 2]


def statuses(handler: type, requests: int) -> list[int]:
    """Send `requests` POSTs from two load workers to a server with this handler."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]

        def connect():
            return loadgen.Connection("127.0.0.1", port, "/", b"")

        records, _ = asyncio.run(loadgen.closed_loop(connect, [b"{}"], 2, requests, 30))
    finally:
        server.shutdown()
        server.server_close()
    return [record["status"] for record in records]


def test_a_server_closing_kept_alive_connections_loses_no_request():
    assert statuses(ClosesAfterAnswering, 20) == [200] * 20
    assert ClosesAfterAnswering.received == 20


def test_a_hang_up_mid_answer_is_a_failed_request_and_is_not_sent_again():
    assert statuses(HangsUpMidAnswer, 4) == [0] * 4
    assert HangsUpMidAnswer.received == 4

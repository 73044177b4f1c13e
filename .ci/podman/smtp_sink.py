#!/usr/bin/env python3
"""A tiny SMTP sink for the compose test (.ci/compose): stands in for Mailpit, whose image
cannot be pulled on the CI machine. Python standard library only.

- SMTP on port 1025 (what notification-service's SMTP_URL in docker-compose.yml points at):
  EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT; no TLS, no auth. Each message is written to
  the mail directory (a volume, so it survives `compose down` and `up`) and fsynced before the
  250 reply, as a real server's acceptance is durable.
- HTTP on port 8025 (Mailpit's web port, published as MAILPIT_UI_PORT): `GET /readyz` for the
  health check and `GET /api/v1/messages`, a subset of Mailpit's API of the same name
  (`total`, and per message `ID`, `MessageID` without angle brackets, `From`, `To`,
  `Subject`, `Created`, `Size`), every stored message oldest first.

Usage: smtp_sink.py [MAIL_DIR]   (default /mail)
"""

import asyncio
import email
import email.policy
import json
import os
import signal
import sys
import threading
import time
from email.utils import getaddresses, parseaddr
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAIL_DIR = sys.argv[1] if len(sys.argv) > 1 else "/mail"
SMTP_PORT = 1025
HTTP_PORT = 8025
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
ready = threading.Event()
counter = 0


def store(mail_from, rcpt_to, data):
    """Writes one message durably; returns its id."""
    global counter
    counter += 1
    message_id = f"{time.time_ns():020d}-{os.getpid()}-{counter:06d}"
    record = {
        "id": message_id,
        "received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mail_from": mail_from,
        "rcpt_to": rcpt_to,
        "data": data.decode("utf-8", "replace"),
    }
    tmp = os.path.join(MAIL_DIR, f".{message_id}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(MAIL_DIR, f"{message_id}.json"))
    dir_fd = os.open(MAIL_DIR, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return message_id


def envelope_address(arg):
    # "FROM:<a@b> BODY=8BITMIME" -> "a@b"
    value = arg.split(":", 1)[1].strip() if ":" in arg else ""
    if value.startswith("<"):
        value = value[1 : value.find(">")] if ">" in value else value[1:]
    else:
        value = value.split(" ", 1)[0]
    return value


async def session(reader, writer):
    async def reply(line):
        writer.write(line.encode() + b"\r\n")
        await writer.drain()

    mail_from, rcpt_to = None, []
    try:
        await reply("220 smtp-sink ESMTP ready")
        while True:
            line = await reader.readline()
            if not line:
                return
            command, _, arg = line.decode("utf-8", "replace").rstrip("\r\n").partition(" ")
            verb = command.upper()
            if verb == "EHLO":
                writer.write(b"250-smtp-sink\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n")
                await reply(f"250 SIZE {MAX_MESSAGE_BYTES}")
            elif verb == "HELO":
                await reply("250 smtp-sink")
            elif verb == "MAIL":
                mail_from, rcpt_to = envelope_address(arg), []
                await reply("250 OK")
            elif verb == "RCPT":
                if mail_from is None:
                    await reply("503 MAIL first")
                else:
                    rcpt_to.append(envelope_address(arg))
                    await reply("250 OK")
            elif verb == "DATA":
                if mail_from is None or not rcpt_to:
                    await reply("503 MAIL and RCPT first")
                    continue
                await reply("354 End data with <CR><LF>.<CR><LF>")
                chunks, size = [], 0
                while True:
                    data_line = await reader.readline()
                    if not data_line:
                        return
                    if data_line in (b".\r\n", b".\n"):
                        break
                    if data_line.startswith(b"."):
                        data_line = data_line[1:]
                    size += len(data_line)
                    chunks.append(data_line)
                if size > MAX_MESSAGE_BYTES:
                    await reply("552 message too big")
                else:
                    stored = store(mail_from, rcpt_to, b"".join(chunks))
                    await reply(f"250 OK: queued as {stored}")
                mail_from, rcpt_to = None, []
            elif verb == "RSET":
                mail_from, rcpt_to = None, []
                await reply("250 OK")
            elif verb == "NOOP":
                await reply("250 OK")
            elif verb == "QUIT":
                await reply("221 bye")
                return
            else:
                await reply("502 command not implemented")
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def messages():
    out = []
    for name in sorted(os.listdir(MAIL_DIR)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(MAIL_DIR, name), encoding="utf-8") as f:
            record = json.load(f)
        parsed = email.message_from_string(record["data"], policy=email.policy.default)
        from_name, from_address = parseaddr(str(parsed.get("From", "")))
        out.append(
            {
                "ID": record["id"],
                "MessageID": str(parsed.get("Message-ID", "")).strip().strip("<>"),
                "From": {"Name": from_name, "Address": from_address},
                "To": [
                    {"Name": n, "Address": a}
                    for n, a in getaddresses([str(v) for v in parsed.get_all("To", [])])
                ],
                "Subject": str(parsed.get("Subject", "")),
                "Created": record["received_at"],
                "Size": len(record["data"].encode()),
                "Envelope": {"From": record["mail_from"], "To": record["rcpt_to"]},
            }
        )
    return out


class Http(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the http.server naming)
        path = self.path.split("?", 1)[0]
        if path in ("/readyz", "/livez"):
            status, body = (200, b"ok\n") if ready.is_set() else (503, b"starting\n")
            content_type = "text/plain"
        elif path == "/api/v1/messages":
            listed = messages()
            status, content_type = 200, "application/json"
            body = json.dumps(
                {"total": len(listed), "messages_count": len(listed), "messages": listed}
            ).encode()
        else:
            status, body, content_type = 404, b"not found\n", "text/plain"
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 (the http.server signature)
        pass  # the test polls often; keep the container log for SMTP


async def main():
    os.makedirs(MAIL_DIR, exist_ok=True)
    http = ThreadingHTTPServer(("0.0.0.0", HTTP_PORT), Http)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    server = await asyncio.start_server(session, "0.0.0.0", SMTP_PORT)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # PID 1 in its container: without handlers SIGTERM would be ignored and every
    # `compose down` would wait for the SIGKILL.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready.set()
    print(f"smtp-sink: SMTP on :{SMTP_PORT}, HTTP on :{HTTP_PORT}, mail in {MAIL_DIR}", flush=True)
    await stop.wait()
    server.close()
    http.shutdown()


if __name__ == "__main__":
    asyncio.run(main())

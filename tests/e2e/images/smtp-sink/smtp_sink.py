#!/usr/bin/env python3
"""An SMTP server that keeps every message it is sent, and shows them over HTTP.

SMTP on port 1025 (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT; no auth, no TLS).
HTTP on port 8025, the subset of mailpit's API the tests use:
  GET /api/v1/messages      {"messages": [{"ID", "From", "To", "Subject"}], newest first}
  GET /api/v1/message/ID    {"ID", "From", "To", "Subject", "Text"}
"""
import asyncio
import email
import email.policy
import json
import signal

MESSAGES = []


def address(text):
    return {"Name": "", "Address": text.strip().strip("<>")}


async def smtp_session(reader, writer):
    async def reply(line):
        writer.write(line.encode() + b"\r\n")
        await writer.drain()

    await reply("220 smtp-sink ready")
    sender, recipients = None, []
    while line := await reader.readline():
        command = line.decode("utf-8", "replace").rstrip("\r\n")
        verb = command[:4].upper()
        if verb in ("EHLO", "HELO"):
            await reply("250-smtp-sink" if verb == "EHLO" else "250 smtp-sink")
            if verb == "EHLO":
                await reply("250-8BITMIME")
                await reply("250 SMTPUTF8")
        elif verb == "MAIL":
            sender, recipients = command.split(":", 1)[1].split()[0], []
            await reply("250 OK")
        elif verb == "RCPT":
            recipients.append(command.split(":", 1)[1].split()[0])
            await reply("250 OK")
        elif verb == "DATA":
            await reply("354 end with <CRLF>.<CRLF>")
            lines = []
            while (data := await reader.readline()) not in (b".\r\n", b".\n", b""):
                lines.append(data[1:] if data.startswith(b"..") else data)
            parsed = email.message_from_bytes(b"".join(lines), policy=email.policy.default)
            body = parsed.get_body(preferencelist=("plain", "html"))
            MESSAGES.append({
                "ID": str(len(MESSAGES) + 1),
                "From": address(sender or ""),
                "To": [address(r) for r in recipients],
                "Subject": str(parsed.get("Subject", "")),
                "Text": body.get_content() if body is not None else "",
            })
            await reply("250 OK: queued")
        elif verb == "RSET":
            sender, recipients = None, []
            await reply("250 OK")
        elif verb == "NOOP":
            await reply("250 OK")
        elif verb == "QUIT":
            await reply("221 bye")
            break
        else:
            await reply("502 command not implemented")
    writer.close()


async def http_session(reader, writer):
    request = await reader.readline()
    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
        pass
    parts = request.decode("latin-1").split()
    path = parts[1] if len(parts) > 1 else "/"
    status, payload = "404 Not Found", {"error": "not found"}
    if path == "/api/v1/messages":
        summaries = [{k: m[k] for k in ("ID", "From", "To", "Subject")} for m in reversed(MESSAGES)]
        status, payload = "200 OK", {"total": len(MESSAGES), "messages": summaries}
    elif path.startswith("/api/v1/message/"):
        wanted = path.rsplit("/", 1)[1]
        for message in MESSAGES:
            if message["ID"] == wanted:
                status, payload = "200 OK", message
    body = json.dumps(payload).encode()
    writer.write(
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
    )
    await writer.drain()
    writer.close()


async def main():
    smtp = await asyncio.start_server(smtp_session, "0.0.0.0", 1025)
    http = await asyncio.start_server(http_session, "0.0.0.0", 8025)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("smtp-sink: SMTP on 1025, HTTP on 8025", flush=True)
    async with smtp, http:
        await stop.wait()


asyncio.run(main())

"""aiosmtpd servers for tests/interop/aiosmtpd.sh: one process, several listeners on
127.0.0.1 (port 0), each with its own certificate (or none) and AUTH rule. Prints one line
"NAME PORT" per listener, then "ready", and serves until SIGTERM. Every message received is
written to OUT/NAME/<n>.eml, its envelope in the first lines.

Usage: aiosmtpd_servers.py OUT NAME:CERT:KEY:AUTH ...  (CERT and KEY empty for no TLS; AUTH
"user=password" to require AUTH with those credentials, empty for none)."""

import asyncio
import os
import signal
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult


class Keep:
    def __init__(self, out):
        self.out = out
        self.n = 0
        os.makedirs(out, exist_ok=True)

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        path = os.path.join(self.out, f"{self.n}.eml")
        with open(path, "wb") as f:
            f.write(f"X-Envelope-From: {envelope.mail_from}\r\n".encode())
            f.write(f"X-Envelope-To: {','.join(envelope.rcpt_tos)}\r\n".encode())
            f.write(f"X-TLS: {session.ssl is not None}\r\n".encode())
            f.write(envelope.original_content or envelope.content)
        return "250 2.0.0 OK kept"


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (
            auth_data.login.decode() == user
            and auth_data.password.decode() == password
        )
        # handled=False: aiosmtpd then answers 535 5.7.8 itself (True would mean "already answered").
        return AuthResult(success=ok, handled=False)

    return check


async def main():
    out = sys.argv[1]
    servers = []
    loop = asyncio.get_running_loop()
    for spec in sys.argv[2:]:
        name, cert, key, auth = spec.split(":", 3)
        ctx = None
        if cert:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cert, key)
        kwargs = dict(hostname=f"{name}.aiosmtpd.test", tls_context=ctx)
        if ctx is not None:
            kwargs["require_starttls"] = True
        if auth:
            user, password = auth.split("=", 1)
            kwargs.update(
                authenticator=authenticator(user, password),
                auth_required=True,
                auth_require_tls=True,
            )
        else:
            kwargs.update(auth_require_tls=False)
        handler = Keep(os.path.join(out, name))
        server = await loop.create_server(
            lambda h=handler, kw=kwargs: SMTP(h, **kw), "127.0.0.1", 0
        )
        servers.append(server)
        print(name, server.sockets[0].getsockname()[1], flush=True)
    print("ready", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


asyncio.run(main())

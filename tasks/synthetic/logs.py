"""Log and mail lines with PII planted at known spans: text where numbers abound and dates pass for phones.

Families: Apache/nginx access and error logs, syslog (BSD and RFC 5424), Java and Python
application logs with their stack traces, Asterisk logs, SIP messages and CDRs, mail headers,
bodies and signatures, CSV exports. A line is written from pieces; a planted piece (an e-mail
address, an IPv4/IPv6 address, a phone number) is labelled with its span. The rest is what such
files are full of: timestamps in every format of :mod:`tasks.synthetic.timestamps`, versions,
ports, pids, ids, hashes, UUIDs, MAC addresses, byte counts, durations, HTTP status lines. A share
of the lines carries no PII at all: any detection on one of them is a false positive.

Phone numbers are libphonenumber-valid for their region; national formats are those of
NATIONAL_PHONE_REGIONS, which a detector must be configured with. Deterministic for a seed.
"""

from __future__ import annotations

import ipaddress
import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import phonenumbers

from tasks.synthetic.pii import (
    INTERNATIONAL_PHONE_REGIONS,
    NATIONAL_PHONE_REGIONS,
    LabelledSpan,
    LabelledText,
    email,
    ip_address,
    valid_phone,
)
from tasks.synthetic.timestamps import timestamp

PII_SHARE = 0.4  # of lines that carry planted PII
PhoneFormat = phonenumbers.PhoneNumberFormat
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Planted:
    kind: str
    value: str


Piece = str | Planted


def _pick(r: random.Random, *makers: Callable[[], T]) -> T:
    """One alternative, built alone: drawing the others' random values would cost for nothing."""
    return r.choice(makers)()


def _hex(r: random.Random, count: int) -> str:
    return f"{r.getrandbits(4 * count):0{count}x}"


def _ipv4(r: random.Random) -> str:
    return f"{r.randint(11, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"


def _ip(r: random.Random) -> Planted:
    return Planted("IP_ADDRESS", _ipv4(r) if r.random() < 0.6 else ip_address(r))


def _ip_port(r: random.Random, port: int) -> list[Piece]:
    """An address and its port; an IPv6 address in brackets, as RFC 3986 writes it."""
    ip = _ip(r)
    return [ip, f":{port}"] if "." in ip.value and ":" not in ip.value else ["[", ip, f"]:{port}"]


def _email(r: random.Random) -> Planted:
    return Planted("EMAIL_ADDRESS", email(r))


def _phone_text(r: random.Random, style: str) -> str:
    national = style in ("national", "bare_national", "trunk_in_brackets")
    region = r.choice(NATIONAL_PHONE_REGIONS if national else INTERNATIONAL_PHONE_REGIONS)
    if style == "trunk_in_brackets" and region == "US":
        region = r.choice(("GB", "DE", "FR"))
    number = valid_phone(r, region)
    if style == "e164":
        return phonenumbers.format_number(number, PhoneFormat.E164)
    if style == "international":
        text = phonenumbers.format_number(number, PhoneFormat.INTERNATIONAL)
        return text if r.random() < 0.7 else text.replace(" ", "-")
    if style == "trunk_in_brackets":  # "+44 (0)1772 285411", as European signatures write it
        country, rest = phonenumbers.format_number(number, PhoneFormat.INTERNATIONAL).split(" ", 1)
        return f"{country} (0){rest}"
    if style == "bare_national":
        return phonenumbers.format_number(number, PhoneFormat.NATIONAL).translate(str.maketrans("", "", " ()-./"))
    text = phonenumbers.format_number(number, PhoneFormat.NATIONAL)
    if region == "US":
        return r.choice([text, text.replace("(", "").replace(") ", "-"), text.replace("(", "").replace(") ", ".").replace("-", ".")])
    return r.choice([text, text, text.replace(" ", "."), text.replace(" ", "-")])


def _phone(r: random.Random, *styles: str) -> Planted:
    return Planted("PHONE_NUMBER", _phone_text(r, r.choice(styles or ("e164", "international", "national"))))


HOSTS = ["web01", "web-02", "app3", "db-primary", "lb1", "worker-7", "ip-10-0-3-17", "k8s-node-04"]
DOMAINS = ["example.com", "example.org", "mail.example.net", "shop.example.co.uk"]
USERS = ["deploy", "root", "www-data", "jenkins", "postgres", "ubuntu", "admin"]
NAMES = ["Jo Smith", "Anna Garcia", "Li Chen", "Sven Larsen", "Priya Rao", "Marc Dubois", "Olu Okafor"]
METHODS = ["GET", "GET", "GET", "POST", "PUT", "DELETE", "HEAD"]
STATUSES = [200, 200, 200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 404, 500, 502, 503]
REASONS = {200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently", 302: "Found",
           304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def _user_agent(r: random.Random) -> str:
    major = r.randint(90, 125)
    return _pick(
        r,
        lambda: f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{major}.0.0.0 Safari/537.36",
        lambda: f"Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{major}.0.{r.randint(4000, 6500)}.{r.randint(10, 250)} Mobile Safari/537.36",
        lambda: f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.{r.randint(0, 4)} Safari/605.1.15",
        lambda: f"Mozilla/5.0 (X11; Linux x86_64; rv:{major}.0) Gecko/20100101 Firefox/{major}.0",
        lambda: "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        lambda: f"curl/7.{r.randint(29, 88)}.{r.randint(0, 1)}",
        lambda: f"python-requests/2.{r.randint(20, 31)}.0",
        lambda: "Go-http-client/1.1",
        lambda: f"Apache-HttpClient/4.5.{r.randint(1, 14)} (Java/11.0.{r.randint(1, 21)})",
    )


def _version(r: random.Random) -> str:
    return f"{r.randint(0, 12)}.{r.randint(0, 40)}.{r.randint(0, 99)}"


def _byte_count(r: random.Random) -> int:
    return int(10 ** r.uniform(0, 11))


def _duration(r: random.Random) -> str:
    seconds = 10 ** r.uniform(-3, 4)
    return _pick(
        r,
        lambda: f"{seconds * 1000:.0f}ms",
        lambda: f"{seconds:.3f}s",
        lambda: f"{seconds * 1000:.3f} ms",
        lambda: f"{int(seconds) // 60}m{seconds % 60:.3f}s",
        lambda: f"{int(seconds) // 3600:02d}:{int(seconds) // 60 % 60:02d}:{seconds % 60:06.3f}",
        lambda: f"{seconds * 1000:.0f} milliseconds",
    )


def _path(r: random.Random) -> str:
    return _pick(
        r,
        lambda: f"/api/v{r.randint(1, 3)}/orders/{r.randint(10**5, 10**10)}",
        lambda: f"/static/js/main.{_hex(r, 8)}.js",
        lambda: f"/api/v1/events?since={timestamp(r, 'epoch_millis')}&limit={r.choice([50, 100, 1000])}",
        lambda: f"/reports/daily-{timestamp(r, 'iso_date')}.csv",
        lambda: f"/wp-content/uploads/{r.randint(2005, 2033)}/{r.randint(1, 12):02d}/IMG_{timestamp(r, 'compact_date')}_{r.randrange(240000):06d}.jpg",
        lambda: f"/track?id={r.randint(10**6, 10**11)}&v={_version(r)}",
        lambda: "/health",
        lambda: "/favicon.ico",
        lambda: "/wp-login.php",
        lambda: f"/users/{uuid.UUID(int=r.getrandbits(128), version=4)}/avatar",
        lambda: f"/search?q=order+{r.randint(10**5, 10**9)}",
    )


def _client(r: random.Random, pii: bool) -> Piece:
    return _ip(r) if pii else r.choice(["-", "localhost", f"{r.choice(HOSTS)}.internal", r.choice(DOMAINS)])


def apache_access(r: random.Random, pii: bool) -> list[Piece]:
    status = r.choice(STATUSES)
    user: Piece = _email(r) if pii and r.random() < 0.15 else r.choice(["-", "-", "-", r.choice(USERS)])
    referer = r.choice(["-", f"https://www.{r.choice(DOMAINS)}{_path(r)}"])
    request = f'"{r.choice(METHODS)} {_path(r)} HTTP/{r.choice(["1.0", "1.1", "2.0"])}" {status} {_byte_count(r)}'
    tail = f' "{referer}" "{_user_agent(r)}"'
    if r.random() < 0.3:  # nginx with $request_time and $upstream_addr
        upstream = _ip_port(r, r.randint(3000, 9000)) if pii and r.random() < 0.5 else [f"unix:/run/app-{r.randint(1, 9)}.sock"]
        return [_client(r, pii), f" - ", user, f" {timestamp(r, 'apache_access')} {request}{tail} {r.random() * 3:.3f} ", *upstream]
    return [_client(r, pii), " - ", user, f" {timestamp(r, 'apache_access')} {request}{tail}"]


def web_error(r: random.Random, pii: bool) -> list[Piece]:
    if r.random() < 0.5:
        client: list[Piece] = [" [client ", *_ip_port(r, r.randint(1024, 65535)), "]"] if pii else []
        return [f"{timestamp(r, 'apache_error')} [{r.choice(['core', 'ssl', 'proxy_fcgi', 'php7'])}:{r.choice(['error', 'warn', 'notice'])}] "
                f"[pid {r.randint(100, 4194304)}:tid {r.randint(139_600_000_000_000, 140_737_488_355_327)}]", *client,
                f" AH{r.randrange(100000):05d}: {r.choice(['File does not exist', 'Symbolic link not allowed', 'script timed out after 300s'])}: /var/www/html{_path(r)}"]
    server = r.choice(DOMAINS)
    client = [", client: ", _ip(r)] if pii else []
    return [f"{timestamp(r, 'slash_ymd')} [{r.choice(['error', 'warn', 'crit'])}] {r.randint(100, 99999)}#{r.randint(0, 64)}: *{r.randint(1, 10**8)} "
            f'upstream timed out (110: Connection timed out) while reading response header from upstream', *client,
            f', server: {server}, request: "GET {_path(r)} HTTP/1.1", upstream: "http://{r.choice(HOSTS)}.internal:{r.randint(3000, 9000)}{_path(r)}", host: "{server}"']


def syslog(r: random.Random, pii: bool) -> list[Piece]:
    stamp = timestamp(r, "syslog") if r.random() < 0.85 else f"<{r.randint(0, 191)}>1 {timestamp(r, 'iso8601_micros')}"
    head = f"{stamp} {r.choice(HOSTS)} "
    pid = r.randint(1, 4194304)
    if pii:
        return _pick(
            r,
            lambda: [head + f"sshd[{pid}]: Accepted publickey for {r.choice(USERS)} from ", _ip(r), f" port {r.randint(1024, 65535)} ssh2: RSA SHA256:{_hex(r, 43)}"],
            lambda: [head + f"sshd[{pid}]: Failed password for invalid user {r.choice(USERS)} from ", _ip(r), f" port {r.randint(1024, 65535)} ssh2"],
            lambda: [head + f"postfix/smtpd[{pid}]: {_hex(r, 10).upper()}: client={r.choice(DOMAINS)}[", _ip(r), "]"],
            lambda: [head + f"postfix/qmgr[{pid}]: {_hex(r, 10).upper()}: from=<", _email(r), f">, size={_byte_count(r)}, nrcpt=1 (queue active)"],
            lambda: [head + f"dhcpd[{pid}]: DHCPACK on ", _ip(r), f" to {':'.join(_hex(r, 2) for _ in range(6))} via eth{r.randint(0, 3)}"],
        )
    return _pick(
        r,
        lambda: [head + f"CRON[{pid}]: ({r.choice(USERS)}) CMD (   cd / && run-parts --report /etc/cron.hourly)"],
        lambda: [head + f"kernel: {timestamp(r, 'kernel_uptime')} eth{r.randint(0, 3)}: Link is Up - {r.choice([100, 1000, 10000])}Mbps/Full - flow control rx/tx"],
        lambda: [head + f"kernel: {timestamp(r, 'kernel_uptime')} Out of memory: Killed process {pid} (java) total-vm:{_byte_count(r)}kB, anon-rss:{_byte_count(r)}kB"],
        lambda: [head + f"postfix/{r.choice(['qmgr', 'cleanup', 'smtp'])}[{pid}]: {_hex(r, 10).upper()}: {r.choice(['removed', f'message-id=<{_hex(r, 16)}@{r.choice(HOSTS)}>', f'delay={r.random() * 9:.2f}, delays=0.1/0/0.2/0.3, dsn=2.0.0, status=sent'])}"],
        lambda: [head + f"systemd[1]: Started Session {r.randint(1, 99999)} of user {r.choice(USERS)}."],
        lambda: [head + f"systemd[1]: app.service: Main process exited, code=exited, status={r.randint(0, 255)}/FAILURE"],
        lambda: [head + f"ntpd[{pid}]: adjusting local clock by {r.uniform(-1, 1):.6f}s"],
        lambda: [head + f"dockerd[{pid}]: time=\"{timestamp(r, 'iso8601_nanos')}\" level=info msg=\"ignoring event\" container={_hex(r, 64)}"],
        lambda: [head + f"kernel: Linux version {_version(r)}-{r.randint(20, 120)}-generic (buildd@lcy02-amd64-{r.randint(1, 99):03d}) #{r.randint(1, 150)}-Ubuntu SMP {timestamp(r, 'date_command')}"],
    )


def java_log(r: random.Random, pii: bool) -> list[Piece]:
    stamp = timestamp(r, r.choice(["iso_space_comma_millis", "iso8601_millis", "dd_mon_yyyy_time", "time_fraction"]))
    thread = r.choice(["main", f"http-nio-8080-exec-{r.randint(1, 200)}", f"pool-{r.randint(1, 9)}-thread-{r.randint(1, 64)}"])
    head = f"{stamp} {r.choice(['INFO ', 'WARN ', 'ERROR', 'DEBUG'])} [{thread}] "
    if pii:
        return _pick(
            r,
            lambda: [head + f"c.e.billing.InvoiceMailer - sent invoice {r.randint(2000, 2033)}-{r.randint(1, 999999):06d} to ", _email(r)],
            lambda: [head + "o.h.engine.jdbc.spi.SqlExceptionHelper - Connection to ", *_ip_port(r, r.choice([5432, 3306, 1521])), " refused."],
            lambda: ["Caused by: java.net.ConnectException: Connection refused: /", *_ip_port(r, r.randint(1024, 65535))],
            lambda: [head + "c.e.crm.ContactService - updated contact id=", str(r.randint(10**4, 10**8)), ", phone=", _phone(r), ", email=", _email(r)],
        )
    frame = f"{r.choice(['com.example.orders.OrderService', 'org.springframework.web.servlet.FrameworkServlet', 'java.base/java.util.concurrent.ThreadPoolExecutor'])}"
    return [_pick(
        r,
        lambda: f"\tat {frame}.{r.choice(['process', 'doGet', 'runWorker'])}({frame.rsplit('.', 1)[1]}.java:{r.randint(1, 2500)})",
        lambda: f"\t... {r.randint(1, 99)} common frames omitted",
        lambda: f"{head}c.e.orders.OrderService - order {r.randint(10**5, 10**10)} processed in {_duration(r)} (batch {uuid.UUID(int=r.getrandbits(128), version=4)})",
        lambda: f"{head}o.s.b.w.embedded.tomcat.TomcatWebServer - Tomcat started on port(s): {r.choice([8080, 8443, 9090])} (http) with context path ''",
        lambda: f"{head}o.a.kafka.clients.consumer.KafkaConsumer - partition orders-{r.randint(0, 63)} offset {r.randint(10**6, 10**12)} lag {r.randint(0, 10**6)}",
        lambda: f"java.lang.IllegalStateException: timeout after {r.randint(1, 600000)} ms waiting for lock {_hex(r, 16)}",
        lambda: f"{stamp} INFO [main] org.apache.catalina.startup.Catalina.start Server startup in [{r.randint(100, 99999)}] milliseconds",
    )]


def python_log(r: random.Random, pii: bool) -> list[Piece]:
    stamp = timestamp(r, r.choice(["iso_space_comma_millis", "iso_space", "iso8601_micros"]))
    if pii:
        return _pick(
            r,
            lambda: [f"{stamp} - app.mail - INFO - password reset requested for ", _email(r)],
            lambda: ["INFO:     ", *_ip_port(r, r.randint(1024, 65535)), f' - "GET {_path(r)} HTTP/1.1" {r.choice(STATUSES)}'],
            lambda: [f"urllib3.exceptions.ReadTimeoutError: HTTPConnectionPool(host='", _ip(r), f"', port={r.choice([80, 8080, 8000])}): Read timed out. (read timeout={r.randint(1, 60)})"],
            lambda: [f"[{stamp}: WARNING/ForkPoolWorker-{r.randint(1, 16)}] sms to ", _phone(r, "e164"), f" failed: carrier returned {r.randint(20000, 39999)}"],
        )
    return [_pick(
        r,
        lambda: f"{stamp} - app.worker - INFO - processed {r.randint(0, 10**7)} records in {_duration(r)}",
        lambda: f"[{timestamp(r, 'iso_space_offset')}] [{r.randint(1, 4194304)}] [INFO] Booting worker with pid: {r.randint(1, 4194304)}",
        lambda: f"[{timestamp(r, 'slash_dmy')}] \"GET {_path(r)} HTTP/1.1\" {r.choice(STATUSES)} {_byte_count(r)}",
        lambda: f'  File "/srv/app/venv/lib/python3.{r.randint(8, 12)}/site-packages/app/worker.py", line {r.randint(1, 3000)}, in run',
        lambda: f"    result = self.handle(item, deadline={timestamp(r, 'epoch_fraction')})",
        lambda: f"ValueError: time data '{timestamp(r)}' does not match format '%Y-%m-%d %H:%M:%S'",
        lambda: f"[{stamp}: INFO/MainProcess] Task app.tasks.sync[{uuid.UUID(int=r.getrandbits(128), version=4)}] succeeded in {r.random() * 30:.9f}s: None",
        lambda: "Traceback (most recent call last):",
    )]


def _extension(r: random.Random, pii: bool) -> Piece:
    """What Asterisk dials and logs: an E.164 number, or national digits as the trunk takes them."""
    if pii:
        return _phone(r, "e164", "e164", "bare_national")
    return r.choice(["s", str(r.randint(100, 9999)), "h", "i", "t"])


def asterisk(r: random.Random, pii: bool) -> list[Piece]:
    head = f"[{timestamp(r, r.choice(['syslog', 'iso_space']))}] "
    channel = f"SIP/{r.choice(['trunk', str(r.randint(100, 9999))])}-{_hex(r, 8)}"
    if pii:
        return _pick(
            r,
            lambda: [head + f"VERBOSE[{r.randint(1000, 99999)}][C-{_hex(r, 8)}] pbx.c:     -- Executing [", _extension(r, True), f"@from-trunk:1] Dial(\"{channel}\", \"SIP/trunk/",
                _extension(r, True), ",300,\") in new stack"],
            lambda: [head + f"NOTICE[{r.randint(1000, 99999)}] chan_sip.c: Call from '' (", *_ip_port(r, 5060), ") to extension '", _extension(r, True),
                f"' rejected because extension not found in context 'public'."],
            lambda: [head + f"NOTICE[{r.randint(1000, 99999)}] chan_sip.c: Registration from '\"{r.randint(100, 999)}\" <sip:{r.randint(100, 999)}@", *_ip_port(r, 5060),
                ">' failed for '", *_ip_port(r, 5060), "' - Wrong password"],
            lambda: [f"    -- Called SIP/", _extension(r, True), "@trunk"],
            lambda: ["INVITE sip:", _extension(r, True), "@", *_ip_port(r, 5060), " SIP/2.0"],
            lambda: [f'"","', _extension(r, True), f'","{r.randint(100, 9999)}","from-trunk","""{r.choice(NAMES)}"" <', _extension(r, True),
                f'>","{channel}","SIP/{r.randint(100, 9999)}-{_hex(r, 8)}","Dial","SIP/{r.randint(100, 9999)},20","{timestamp(r, "iso_space")}","{timestamp(r, "iso_space")}","{timestamp(r, "iso_space")}",'
                f'{r.randint(0, 3600)},{r.randint(0, 3600)},"ANSWERED","DOCUMENTATION","{timestamp(r, "epoch_seconds")}.{r.randint(1, 999)}",""'],
        )
    return [_pick(
        r,
        lambda: f"{head}VERBOSE[{r.randint(1000, 99999)}][C-{_hex(r, 8)}] app_dial.c:     -- {channel} is ringing",
        lambda: f"{head}VERBOSE[{r.randint(1000, 99999)}] asterisk.c: Asterisk {_version(r)} built by root @ {r.choice(HOSTS)} on a x86_64 running Linux on {timestamp(r, 'date_command')}",
        lambda: f"  == Spawn extension (from-internal, {_extension(r, False)}, {r.randint(1, 20)}) exited non-zero on '{channel}'",
        lambda: f"{head}WARNING[{r.randint(1000, 99999)}] chan_sip.c: Retransmission timeout reached on transmission {_hex(r, 32)}@{_hex(r, 8)} for seqno {r.randint(1, 999)} (Critical Response) -- See https://wiki.asterisk.org/wiki/display/AST/SIP+Retransmissions",
        lambda: f"CSeq: {r.randint(1, 999)} INVITE",
        lambda: f"Content-Length: {r.randint(0, 4000)}",
        lambda: f"User-Agent: Asterisk PBX {_version(r)}",
        lambda: f"Via: SIP/2.0/UDP {r.choice(HOSTS)}.internal:5060;branch=z9hG4bK{_hex(r, 8)};rport",
        lambda: "SIP/2.0 180 Ringing",
    )]


def mail_header(r: random.Random, pii: bool) -> list[Piece]:
    if pii:
        return _pick(
            r,
            lambda: [f"Received: from {r.choice(DOMAINS)} ({r.choice(DOMAINS)} [", _ip(r), f"]) by mx.example.org (Postfix) with ESMTPS id {_hex(r, 10).upper()} for <",
                _email(r), f">; {timestamp(r, 'rfc2822_comment')}"],
            lambda: ["Received: by ", Planted("IP_ADDRESS", ipaddress.IPv6Address(":".join(["2002", "a05", *(_hex(r, 4) for _ in range(6))])).compressed),
                f" with SMTP id {_hex(r, 3)}csp{r.randint(10**5, 10**7)}; {timestamp(r, 'rfc2822_comment')}"],
            lambda: [f'From: "{r.choice(NAMES)}" <', _email(r), ">"],
            lambda: ["To: ", _email(r)],
            lambda: ["X-Originating-IP: [", _ip(r), "]"],
            lambda: ["Return-Path: <", _email(r), ">"],
            lambda: [f"From ", _email(r), f" {timestamp(r, 'ctime')}"],
        )
    return [_pick(
        r,
        lambda: f"Date: {timestamp(r, r.choice(['rfc2822', 'rfc2822_comment', 'rfc2822_no_weekday']))}",
        lambda: f"Subject: Invoice {r.randint(2000, 2033)}-{r.randint(1, 999999):06d} due {timestamp(r, r.choice(['us_short', 'dot_dmy', 'iso_date']))}",
        lambda: "MIME-Version: 1.0",
        lambda: 'Content-Type: text/plain; charset="UTF-8"',
        lambda: f"Content-Length: {_byte_count(r)}",
        lambda: f"X-Spam-Status: No, score={r.uniform(-5, 5):.1f} required=5.0 tests=BAYES_00,DKIM_SIGNED autolearn=ham version={_version(r)}",
        lambda: f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={r.choice(DOMAINS)}; s={timestamp(r, 'compact_date')}; t={timestamp(r, 'epoch_seconds')}; bh={_hex(r, 43)}=",
        lambda: f"X-Mailer: Microsoft Outlook {r.randint(14, 16)}.0",
        lambda: f"Expires: {timestamp(r, 'http_date')}",
        lambda: f"Last-Modified: {timestamp(r, 'rfc850')}",
        lambda: f"HTTP/1.1 {(status := r.choice(STATUSES))} {REASONS[status]}",
    )]


def mail_body(r: random.Random, pii: bool) -> list[Piece]:
    if pii:
        return _pick(
            r,
            lambda: [f"On {timestamp(r, 'mail_quote')} {r.choice(NAMES)} <", _email(r), "> wrote:"],
            lambda: [f"On {timestamp(r, 'slash_dmy')}, {r.choice(NAMES)} wrote: please call me on ", _phone(r), f" before {timestamp(r, 'time_hours_minutes')}."],
            lambda: [f"Sent: {timestamp(r, 'outlook_sent')} | From: {r.choice(NAMES)} [mailto:", _email(r), "]"],
        )
    return [_pick(
        r,
        lambda: f"Sent: {timestamp(r, 'outlook_sent')}",
        lambda: f"The meeting moved to {timestamp(r, r.choice(['long_us', 'long_day_month', 'dot_dmy', 'slash_dmy']))} at {timestamp(r, r.choice(['time_hours_minutes', 'time_12h']))} (CET).",
        lambda: f"Please pay invoice {r.randint(2000, 2033)}-{r.randint(1, 999999):06d} of {timestamp(r, 'dd_mon_yyyy')} by {timestamp(r, 'iso_date')}.",
        lambda: f"Our office hours: Mon-Fri {r.randint(7, 10):02d}:00-{r.randint(16, 19):02d}:30, closed on {timestamp(r, 'long_day_month')}.",
        lambda: f"Registered in England and Wales, company no. {r.randint(10**6, 10**8 - 1):08d} | VAT GB {r.randint(100, 999)} {r.randint(1000, 9999)} {r.randint(10, 99)}",
        lambda: f"Your ticket #{r.randint(10**5, 10**7)} was updated on {timestamp(r)}.",
        lambda: "-----Original Message-----",
        lambda: "-- ",
    )]


def signature(r: random.Random, pii: bool) -> list[Piece]:
    if pii:
        return _pick(
            r,
            lambda: ["Tel: ", _phone(r, "trunk_in_brackets", "international"), " | Mob: ", _phone(r, "international", "trunk_in_brackets")],
            lambda: ["Phone: ", _phone(r, "national"), " | Fax: ", _phone(r, "national")],
            lambda: ["T ", _phone(r, "trunk_in_brackets"), " · F ", _phone(r, "trunk_in_brackets"), " · ", _email(r)],
            lambda: ["Direct: ", _phone(r, "international"), " ext. ", str(r.randint(10, 9999))],
            lambda: [f"{r.choice(NAMES)} | ", _email(r), " | ", _phone(r)],
        )
    return [_pick(
        r,
        lambda: f"{r.choice(NAMES)} | Senior Engineer | www.{r.choice(DOMAINS)}",
        lambda: f"Example Ltd, {r.randint(1, 250)} High Street, Preston PR{r.randint(1, 9)} {r.randint(1, 9)}{r.choice('ABDEFGHJ')}{r.choice('ABDEFGHJ')}",
        lambda: f"{r.randint(100, 9999)} Pennsylvania Ave NW, Washington, DC {r.randint(20001, 20599)}-{r.randint(1, 9999):04d}",
        lambda: "This e-mail and any attachments are confidential and intended solely for the addressee.",
    )]


CSV_PII_HEADERS = "id,name,email,phone,signup_ip,created_at,amount"
CSV_CLEAN_HEADERS = ["order_id,sku,qty,unit_price,created_at,updated_at,status", "timestamp,host,cpu_pct,mem_bytes,rx_bytes,tx_bytes,latency_ms"]


def csv_row(r: random.Random, pii: bool) -> list[Piece]:
    if pii:
        phone = _phone(r, "e164", "international", "national", "bare_national")
        return [f"{r.randint(1, 10**7)},{r.choice(NAMES)},", _email(r), ",", phone, ",", _ip(r),
                f",{timestamp(r, r.choice(['iso_space', 'iso8601', 'us_12h']))},{r.uniform(0, 9999):.2f}"]
    if r.random() < 0.05:
        return [r.choice([*CSV_CLEAN_HEADERS, CSV_PII_HEADERS])]
    return [_pick(
        r,
        lambda: f"{r.randint(10**5, 10**10)},SKU-{r.randint(1, 99999):05d},{r.randint(1, 20)},{r.uniform(0.5, 999):.2f},{timestamp(r, 'iso8601')},{timestamp(r, 'iso8601')},shipped",
        lambda: f"{timestamp(r, 'epoch_seconds')},{r.choice(HOSTS)},{r.uniform(0, 100):.1f},{_byte_count(r)},{_byte_count(r)},{_byte_count(r)},{r.uniform(0, 2000):.3f}",
        lambda: f"{timestamp(r, r.choice(['iso_date', 'slash_dmy', 'us_short']))}\t{r.randint(10**5, 10**10)}\t{_hex(r, 40)}\t{r.uniform(0, 1):.6f}",
    )]


FAMILIES: dict[str, Callable[[random.Random, bool], list[Piece]]] = {
    "apache_access": apache_access, "web_error": web_error, "syslog": syslog, "java": java_log, "python": python_log,
    "asterisk": asterisk, "mail_header": mail_header, "mail_body": mail_body, "signature": signature, "csv": csv_row,
}


def _compose(pieces: Iterable[Piece], family: str) -> LabelledText:
    parts, spans, length = [], [], 0
    for piece in pieces:
        text = piece.value if isinstance(piece, Planted) else piece
        if isinstance(piece, Planted):
            spans.append(LabelledSpan(length, length + len(text), piece.kind))
        parts.append(text)
        length += len(text)
    return LabelledText("".join(parts), tuple(spans), (family,))


def log_line(r: random.Random, pii: bool) -> LabelledText:
    family = r.choice(sorted(FAMILIES))
    line = _compose(FAMILIES[family](r, pii), family)
    if bool(line.spans) != pii:
        raise AssertionError(f"{family} wrote a line {'without' if pii else 'with'} PII: {line.text!r}")
    return line


def log_lines(seed: int = 0, count: int = 10_000, pii_share: float = PII_SHARE) -> list[LabelledText]:
    """``count`` lines; about ``pii_share`` of them carry planted PII, the others none."""
    rng = random.Random(seed)
    return [log_line(rng, rng.random() < pii_share) for _ in range(count)]


def changed_clean_lines(texts: Iterable[LabelledText], predict: Callable[[str], Iterable[object]]) -> tuple[int, int]:
    """(lines without planted PII on which ``predict`` found something, lines without planted PII)."""
    changed = total = 0
    for sample in texts:
        if not sample.spans:
            total += 1
            changed += any(True for _ in predict(sample.text))
    return changed, total

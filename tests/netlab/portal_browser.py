"""A volunteer's browser on a lab host (standard library only): `python -m tests.netlab.portal_browser
join-command PORTAL EMAIL PASSWORD SLUG` logs in, asks the project's Join page for a command (a POST) and
prints the command exactly as the page shows it; `get URL` prints a page or API answer."""

from __future__ import annotations

import html
import http.cookiejar
import re
import sys
import urllib.parse
import urllib.request


def browser() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def csrf_token(page: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    if match is None:
        raise SystemExit("no CSRF token on the page")
    return match.group(1)


def join_command(portal: str, email: str, password: str, slug: str) -> str:
    opener = browser()
    login = opener.open(f"{portal}/accounts/login/", timeout=20).read().decode()
    form = urllib.parse.urlencode(
        {"csrfmiddlewaretoken": csrf_token(login), "username": email, "password": password}
    )
    opener.open(f"{portal}/accounts/login/", data=form.encode(), timeout=20)
    offer = opener.open(f"{portal}/projects/{slug}/join/", timeout=20).read().decode()
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": csrf_token(offer)}).encode()
    page = opener.open(f"{portal}/projects/{slug}/join/", data=form, timeout=20).read().decode()
    match = re.search(r"<pre class=\"command\"[^>]* data-join-command>([^<]+)</pre>", page)
    if match is None:
        raise SystemExit("the Join page shows no command")
    return html.unescape(match.group(1))


def main() -> None:
    if sys.argv[1] == "join-command":
        print(join_command(*sys.argv[2:6]))
    elif sys.argv[1] == "get":
        print(urllib.request.urlopen(sys.argv[2], timeout=10).read().decode())


if __name__ == "__main__":
    main()

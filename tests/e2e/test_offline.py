"""No request leaves the machine (issue 12, point 19): Chromium visits every page of the app, and any
request or websocket to a host other than the app's own fails the test, with its URL.

Streamlit fetches a ":material/...:" page_icon from fonts.gstatic.com and an emoji one never leaves
the page (a data: URL), so the tab icon is app/static/nanolens.png, served by the app itself; the
Material icons of the navigation, links and buttons are drawn with the font Streamlit ships."""
from __future__ import annotations

from urllib.parse import urljoin, urlparse

from tests.e2e.helpers import assert_no_exception, open_app

LOCAL_HOSTS = {"127.0.0.1", "localhost"}
LOCAL_SCHEMES = {"data", "blob", "about", "chrome-extension"}  # no network: the page's own bytes
NAV_LINKS = "[data-testid='stSidebarNav'] a"


def outside(url: str) -> bool:
    """True when fetching `url` would reach a host other than this machine."""
    u = urlparse(url)
    return u.scheme not in LOCAL_SCHEMES and u.hostname not in LOCAL_HOSTS


def test_no_page_requests_anything_but_the_app(page, live_app: str) -> None:
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url))
    page.on("websocket", lambda ws: seen.append(ws.url))

    open_app(page, live_app)
    links = page.locator(NAV_LINKS)
    urls = [urljoin(live_app + "/", links.nth(i).get_attribute("href")) for i in range(links.count())]
    assert len(urls) >= 9, f"the sidebar lists only {urls}"
    for url in urls:
        open_app(page, url)
        assert_no_exception(page)
        page.wait_for_timeout(500)  # fonts and icons load after the script has finished

    assert any(urlparse(u).path.startswith("/_stcore/") for u in seen), "the request log is empty"
    leaks = sorted({u for u in seen if outside(u)})
    assert not leaks, "requests left the machine:\n" + "\n".join(leaks)


def test_the_tab_icon_is_served_by_the_app(page, live_app: str) -> None:
    open_app(page, live_app)
    href = page.locator("link[rel='shortcut icon']").get_attribute("href")
    url = urljoin(live_app + "/", href or "")
    assert href and urlparse(url).hostname in LOCAL_HOSTS, f"the tab icon is {href}"
    got = page.request.get(url)
    assert got.ok and got.headers["content-type"].startswith("image/"), (got.status, got.headers)

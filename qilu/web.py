"""The web portals' shared layout: templates, static files, login and logout with the token cookie, the language.

Pages are shells: their server routes check who is logged in and render a template; the data comes from the JSON
APIs, fetched by the page's script with the same-origin HttpOnly cookie the login sets.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog
from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from fhir_profiles.extensions import (ACCEPTING_REFERRALS_URL, CAPABILITY_SYSTEM, DIVISION_CODE_URL,
                                      HOSPITAL_TIER_URL, MEDICAL_ALLIANCE_URL, REFERRAL_CAPACITY_URL)
from fhir_profiles.identifiers import NATIONAL_ID_SYSTEM, PRACTITIONER_NUMBER_SYSTEM
from qilu.auth import TOKEN_COOKIE, Caller, TokenService
from qilu.identity import LoginRefused
from qilu.problems import Problem
from referral.directory import SPECIALTY_SYSTEM

log = structlog.get_logger("qilu.web")
router = APIRouter(include_in_schema=False)

ROOT = Path(__file__).resolve().parent.parent
STATIC_DIR = Path(__file__).resolve().parent / "static"
# Each domain keeps its templates beside its pages; the shared layout is here.
TEMPLATE_DIRS = [Path(__file__).resolve().parent / "templates", ROOT / "ehr" / "templates",
                 ROOT / "referral" / "templates", ROOT / "teleconsult" / "templates"]
templates = Jinja2Templates(directory=[str(d) for d in TEMPLATE_DIRS])

LANG_COOKIE = "qilu_lang"
REFRESH_COOKIE = "qilu_refresh"
LANGUAGES = ("zh", "en")
HOME_OF_ROLE = {"practitioner": "/patients", "patient": "/me", "admin": "/admin"}

# Words every page shares: (Chinese, English). Domains add theirs with add_messages().
MESSAGES: dict[str, tuple[str, str]] = {
    "app.name": ("齐鲁健康", "Qilu Health"),
    "app.tagline": ("远程转诊与电子健康档案", "Telemedicine referrals and e-health records"),
    "nav.skip": ("跳到主要内容", "Skip to main content"),
    "nav.main": ("主导航", "Main navigation"),
    "nav.patients": ("患者", "Patients"),
    "nav.outbox": ("转出", "Sent referrals"),
    "nav.inbox": ("转入", "Referral inbox"),
    "nav.me": ("我的档案", "My record"),
    "nav.card": ("健康卡", "Health card"),
    "nav.my_referrals": ("转诊与会诊", "Referrals & consults"),
    "nav.access": ("查阅记录", "Who looked"),
    "nav.dashboard": ("统计", "Dashboard"),
    "nav.directory": ("机构目录", "Directory"),
    "nav.users": ("用户", "Users"),
    "nav.logout": ("退出", "Log out"),
    "nav.language": ("语言", "Language"),
    "nav.signed_in_as": ("当前用户", "Signed in as"),
    "login.title": ("登录", "Log in"),
    "login.username": ("登录名（执业证号或身份证号）", "Login (practitioner number or ID number)"),
    "login.password": ("密码", "Password"),
    "login.submit": ("登录", "Log in"),
    "login.failed": ("登录名或密码不正确。", "The login or the password is wrong."),
    "login.locked": ("密码错误次数过多，账号已暂时锁定，请 {minutes} 分钟后再试。",
                     "Too many wrong passwords: the account is locked; try again in {minutes} minutes."),
    "login.inactive": ("该账号已停用，请联系管理员。", "This account is deactivated; ask your administrator."),
    "login.missing": ("请填写登录名和密码。", "Enter your login and password."),
    "login.expired": ("登录已过期，请重新登录。", "Your session has expired; log in again."),
    "login.hint": ("演示账号密码均为 qilu-demo。", "Every demo login's password is qilu-demo."),
    "state.loading": ("正在加载…", "Loading…"),
    "state.empty": ("暂无记录。", "Nothing here yet."),
    "state.error": ("出错了：{detail}", "Something went wrong: {detail}"),
    "state.offline": ("无法连接服务器，请检查网络后重试。", "The server cannot be reached; check the network and retry."),
    "state.forbidden": ("您没有权限查看此内容。", "You are not allowed to see this."),
    "state.not_found": ("找不到该记录，或您无权查看。", "Not found, or not yours to see."),
    "state.session": ("登录已过期，正在跳转到登录页…", "Your session has expired; going to the login page…"),
    "state.server": ("服务器暂时出现问题，请稍后重试。", "The server had a problem; please try again shortly."),
    "state.saved": ("已保存。", "Saved."),
    "state.live": ("实时更新已连接", "Live updates on"),
    "state.live_lost": ("实时更新已断开，正在重连…", "Live updates lost; reconnecting…"),
    "action.retry": ("重试", "Retry"),
    "action.save": ("保存", "Save"),
    "action.cancel": ("取消", "Cancel"),
    "action.back": ("返回", "Back"),
    "action.next": ("下一步", "Next"),
    "action.open": ("打开", "Open"),
    "action.show_table": ("查看数据表", "Show the data as a table"),
    "page.forbidden.title": ("无权访问", "Not allowed"),
    "page.forbidden.body": ("此页面面向{roles}。您当前以{role}身份登录。",
                            "This page is for {roles}. You are logged in as {role}."),
    "role.practitioner": ("医生", "doctor"),
    "role.patient": ("患者", "patient"),
    "role.admin": ("管理员", "administrator"),
    "gender.male": ("男", "male"),
    "gender.female": ("女", "female"),
    "gender.other": ("其他", "other"),
    "gender.unknown": ("未知", "unknown"),
    "unit.years": ("{n} 岁", "{n} years"),
    "time.days": ("{n} 天", "{n} d"),
    "time.hours": ("{n} 小时", "{n} h"),
    "time.minutes": ("{n} 分", "{n} min"),
    "time.seconds": ("{n} 秒", "{n} s"),
    "time.overdue": ("已超时 {span}", "overdue by {span}"),
    "time.left": ("剩余 {span}", "{span} left"),
}


def add_messages(messages: dict[str, tuple[str, str]]) -> None:
    """A domain's words for its pages, in both languages."""
    MESSAGES.update(messages)


def language(request: Request) -> str:
    asked = request.query_params.get("lang") or request.cookies.get(LANG_COOKIE) or "zh"
    return asked if asked in LANGUAGES else "zh"


def catalogue(lang: str) -> dict[str, str]:
    index = LANGUAGES.index(lang)
    return {key: words[index] for key, words in MESSAGES.items()}


def translate(lang: str, key: str, **values: Any) -> str:
    words = MESSAGES.get(key)
    text = words[LANGUAGES.index(lang)] if words else key
    return text.format(**values) if values else text


def _safe_next(target: str | None) -> str | None:
    # Only paths on this site: an open redirect would let a phishing link borrow our login page.
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return None


# --- who is looking at a page -------------------------------------------------------------------------


class PageRefused(Exception):
    """A page the caller may not see now: answered with the response it carries (a redirect or a page)."""

    def __init__(self, response: Response):
        self.response = response


async def page_refused_handler(request: Request, exc: PageRefused) -> Response:
    return exc.response


async def page_caller(request: Request, roles: Iterable[str] | None = None) -> Caller:
    """The logged-in caller of a page; sends the browser to the login page, or says the page is not theirs."""
    token = request.cookies.get(TOKEN_COOKIE)
    caller = None
    if token:
        try:
            caller = await request.app.state.tokens.caller(token)
        except Problem:
            caller = None
    if caller is None:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        # An expired access token with a refresh token left: renew quietly, then come back.
        where = "/session/resume" if request.cookies.get(REFRESH_COOKIE) else "/login"
        raise PageRefused(RedirectResponse(f"{where}?next={quote(path)}", status_code=303))
    allowed = tuple(roles or ())
    if allowed and caller.role not in allowed:
        lang = language(request)
        body = translate(lang, "page.forbidden.body",
                         roles="、".join(translate(lang, f"role.{r}") for r in allowed) if lang == "zh"
                         else ", ".join(translate(lang, f"role.{r}") for r in allowed),
                         role=translate(lang, f"role.{caller.role}"))
        raise PageRefused(render(request, "forbidden.html", caller, "page.forbidden.title", message=body,
                                 status_code=403))
    return caller


def render(request: Request, template: str, caller: Caller | None, title_key: str, *, status_code: int = 200,
           page: dict[str, Any] | None = None, **context: Any) -> HTMLResponse:
    """A page in the shared layout; `page` is handed to the page's script as JSON (no secrets there)."""
    lang = language(request)
    config = {
        "lang": lang,
        "me": None if caller is None else {"role": caller.role, "name": caller.name, "fhirUser": caller.fhir_user,
                                           "organization": caller.organization},
        "systems": {"nationalId": NATIONAL_ID_SYSTEM, "practitionerNumber": PRACTITIONER_NUMBER_SYSTEM,
                    "capability": CAPABILITY_SYSTEM, "tier": HOSPITAL_TIER_URL, "division": DIVISION_CODE_URL,
                    "alliance": MEDICAL_ALLIANCE_URL, "capacity": REFERRAL_CAPACITY_URL,
                    "accepting": ACCEPTING_REFERRALS_URL, "specialty": SPECIALTY_SYSTEM},
        "page": page or {},
    }
    response = templates.TemplateResponse(request, template, {
        "lang": lang, "caller": caller, "title_key": title_key,
        "t": lambda key, **values: translate(lang, key, **values),
        "messages_json": json.dumps(catalogue(lang), ensure_ascii=False).replace("</", "<\\/"),
        "config_json": json.dumps(config, ensure_ascii=False).replace("</", "<\\/"),
        "path": request.url.path, "next_path": quote(request.url.path + (
            f"?{request.url.query}" if request.url.query else "")), **context}, status_code=status_code)
    # Pages show personal records: never kept by shared caches or the back-forward cache of another user.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; style-src 'self'; "
        "script-src 'self'; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'self'; "
        "form-action 'self'")
    return response


# --- the token cookie ----------------------------------------------------------------------------------


def _set_session(request: Request, response: Response, body: dict[str, Any]) -> None:
    secure = request.url.scheme == "https"
    response.set_cookie(TOKEN_COOKIE, body["access_token"], max_age=int(body["expires_in"]), path="/",
                        httponly=True, samesite="strict", secure=secure)
    # The refresh token only ever travels to the session routes.
    response.set_cookie(REFRESH_COOKIE, body["refresh_token"],
                        max_age=request.app.state.settings.refresh_token_ttl_s, path="/session",
                        httponly=True, samesite="strict", secure=secure)


def _clear_session(response: Response) -> None:
    response.delete_cookie(TOKEN_COOKIE, path="/", httponly=True, samesite="strict")
    response.delete_cookie(REFRESH_COOKIE, path="/session", httponly=True, samesite="strict")


@router.get("/")
async def home(request: Request) -> Response:
    caller = await page_caller(request)
    return RedirectResponse(HOME_OF_ROLE.get(caller.role, "/login"), status_code=303)


@router.get("/login")
async def login_page(request: Request, next: str | None = None, expired: bool = False) -> Response:
    message = translate(language(request), "login.expired") if expired else None
    return render(request, "login.html", None, "login.title", next=_safe_next(next) or "", message=message,
                  username="")


@router.post("/login")
async def login(request: Request, username: str = Form(""), password: str = Form(""),
                next: str = Form("")) -> Response:
    lang = language(request)
    tokens: TokenService = request.app.state.tokens

    def again(key: str, status: int, **values: Any) -> Response:
        return render(request, "login.html", None, "login.title", next=_safe_next(next) or "",
                      message=translate(lang, key, **values), username=username, status_code=status)

    if not username.strip() or not password:
        return again("login.missing", 400)
    try:
        user = await tokens.users.authenticate(username.strip(), password)
    except LoginRefused as refused:
        log.info("portal login refused", reason=refused.reason)
        if refused.reason == "locked":
            return again("login.locked", 429, minutes=max(1, round(refused.retry_after_s / 60)))
        if refused.reason == "inactive":
            return again("login.inactive", 403)
        return again("login.failed", 401)
    body = await tokens.token_response(user)
    response = RedirectResponse(_safe_next(next) or HOME_OF_ROLE.get(user.role, "/"), status_code=303)
    _set_session(request, response, body)
    log.info("portal login", role=user.role)
    return response


async def _refreshed(request: Request) -> dict[str, Any] | None:
    refresh = request.cookies.get(REFRESH_COOKIE)
    if not refresh:
        return None
    try:
        return await request.app.state.tokens.refresh(refresh)
    except Problem:
        return None


@router.get("/session/resume")
async def resume(request: Request, next: str | None = None) -> Response:
    """A page found its access token expired: renew it with the refresh token and go back, or log in again."""
    body = await _refreshed(request)
    target = _safe_next(next) or "/"
    if body is None:
        response = RedirectResponse(f"/login?expired=1&next={quote(target)}", status_code=303)
        _clear_session(response)
        return response
    response = RedirectResponse(target, status_code=303)
    _set_session(request, response, body)
    return response


@router.post("/session/refresh")
async def refresh(request: Request) -> Response:
    """For the pages' scripts: a new access token in the cookie when theirs has expired (204), else 401."""
    body = await _refreshed(request)
    if body is None:
        # The cookies are left alone: another tab may have renewed them a moment ago with this same token.
        return JSONResponse({"type": "about:blank", "title": "Not authenticated", "status": 401,
                             "detail": "Log in again"}, status_code=401, media_type="application/problem+json")
    response = Response(status_code=204)
    _set_session(request, response, body)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    refresh_token = request.cookies.get(REFRESH_COOKIE)
    if refresh_token:
        # The refresh token dies with the session (the access token lives out its few minutes).
        tokens: TokenService = request.app.state.tokens
        await tokens.redis.delete(tokens._refresh_key(refresh_token))
    response = RedirectResponse("/login", status_code=303)
    _clear_session(response)
    return response


@router.get("/lang/{code}")
async def switch_language(request: Request, code: str, next: str | None = None) -> Response:
    response = RedirectResponse(_safe_next(next) or "/", status_code=303)
    if code in LANGUAGES:
        response.set_cookie(LANG_COOKIE, code, max_age=365 * 24 * 3600, path="/", samesite="lax",
                            secure=request.url.scheme == "https")
    return response


def install(app: FastAPI, *page_routers: APIRouter) -> None:
    """Mount the static files, the shared routes and each domain's pages on the app."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_exception_handler(PageRefused, page_refused_handler)
    app.include_router(router)
    for page_router in page_routers:
        app.include_router(page_router)

"""The referral part of the portals: the new-referral wizard, inbox and outbox, a referral's page, the patient's
referrals, and the administrator's dashboard, directory and users."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from qilu import web

router = APIRouter(include_in_schema=False)

web.add_messages({
    "referral.status.requested": ("待接收", "waiting"),
    "referral.status.received": ("已接收", "received"),
    "referral.status.accepted": ("已接受", "accepted"),
    "referral.status.in-progress": ("就诊中", "in care"),
    "referral.status.completed": ("已完成", "completed"),
    "referral.status.rejected": ("已拒绝", "rejected"),
    "referral.status.cancelled": ("已取消", "cancelled"),
    "referral.status.failed": ("未能转诊（超时）", "failed (no hospital in time)"),
    "referral.business.scheduled": ("已预约", "scheduled"),
    "referral.business.arrived": ("已到院", "arrived"),
    "referral.business.completed": ("已出院", "discharged"),
    "referral.priority.routine": ("普通", "routine"),
    "referral.priority.urgent": ("紧急", "urgent"),
    "referral.priority.asap": ("尽快", "as soon as possible"),
    "referral.priority.stat": ("危急", "emergency"),
    "referral.priority_hint.routine": ("48 小时内接受", "accepted within 48 h"),
    "referral.priority_hint.urgent": ("4 小时内接受", "accepted within 4 h"),
    "referral.priority_hint.asap": ("1 小时内接受", "accepted within 1 h"),
    "referral.priority_hint.stat": ("15 分钟内接受", "accepted within 15 min"),
    "referral.direction.up": ("上转", "upward"),
    "referral.direction.down": ("下转", "downward"),
    "referral.event.requested": ("收到新转诊", "New referral"),
    "referral.event.received": ("转诊已被接收", "Referral received"),
    "referral.event.accepted": ("转诊已被接受", "Referral accepted"),
    "referral.event.rejected": ("转诊被拒绝", "Referral rejected"),
    "referral.event.scheduled": ("已预约就诊时间", "Visit scheduled"),
    "referral.event.arrived": ("患者已到院", "Patient arrived"),
    "referral.event.completed": ("转诊已完成，出院小结已回传", "Referral completed; discharge summary returned"),
    "referral.event.cancelled": ("转诊已取消", "Referral cancelled"),
    "referral.event.escalated": ("超时未接受，已转至下一家医院", "Not accepted in time; sent to the next hospital"),
    "referral.event.failed": ("没有医院按时接受", "No hospital accepted in time"),
    "referral.event.referred-back": ("已下转回基层", "Referred back down"),
    "referral.event.consult-started": ("已发起远程会诊", "A remote consult was started"),
    "referral.event.consult-live": ("远程会诊已开始，可以加入", "The remote consult is under way; you can join"),
    "referral.event.consult-ended": ("远程会诊已结束", "The remote consult has ended"),
    "new.title": ("发起转诊", "New referral"),
    "new.step1": ("病情", "Condition"),
    "new.step2": ("选择医院", "Hospital"),
    "new.step3": ("同意与附件", "Consent and records"),
    "new.patient": ("患者", "Patient"),
    "new.reason": ("转诊原因（诊断）", "Reason (diagnosis)"),
    "new.reason_none": ("该患者没有 ICD-10 编码的诊断，请先在病历中记录诊断。",
                        "This patient has no ICD-10 coded problem; record the diagnosis first."),
    "new.direction": ("转诊方向", "Direction"),
    "new.specialty": ("专科", "Specialty"),
    "new.capabilities": ("需要的诊疗能力（可选）", "Capabilities needed (optional)"),
    "new.capabilities_none": ("该专科没有登记特殊诊疗能力。", "No special capabilities are listed for this specialty."),
    "new.priority": ("紧急程度", "Urgency"),
    "new.find": ("查找可接收的医院", "Find hospitals"),
    "new.candidates": ("可接收的医院（按推荐顺序）", "Hospitals that can take the patient, best first"),
    "new.rank": ("第 {n} 推荐", "Choice {n}"),
    "new.score": ("{score} 分", "{score} points"),
    "new.part": ("{reason}（{points}/{weight} 分）", "{reason} ({points} of {weight})"),
    "new.no_candidates": ("没有医院能接收此转诊（专科、能力或号源不满足）。", "No hospital can take this referral "
                          "(specialty, capability or capacity)."),
    "new.excluded": ("其他医院为何未列出", "Why other hospitals are not listed"),
    "new.consent": ("患者同意", "Patient consent"),
    "new.consent_existing": ("患者已签署的共享同意书", "The patient's consent to share records"),
    "new.consent_record": ("患者本人已同意向接收医院共享其病历（将记录为同意书）",
                           "The patient agrees to share their records with the receiving hospital (recorded as a "
                           "Consent)"),
    "new.consent_required": ("没有患者同意，不能转诊。", "A referral needs the patient's consent."),
    "new.attachments": ("随转诊共享的记录", "Records shared with the referral"),
    "new.attachments_none": ("没有可附加的记录。", "No records to attach."),
    "new.note": ("转诊说明", "Note for the receiving doctor"),
    "new.submit": ("提交转诊", "Send the referral"),
    "new.sending": ("正在提交…", "Sending…"),
    "new.choose_hospital": ("请选择一家医院。", "Choose a hospital."),
    "new.need_fields": ("请选择转诊原因和专科。", "Choose the reason and the specialty."),
    "list.inbox": ("转入的转诊", "Referral inbox"),
    "list.outbox": ("转出的转诊", "Sent referrals"),
    "list.filter": ("显示", "Show"),
    "list.open": ("进行中", "Open"),
    "list.all": ("全部", "All"),
    "list.priority": ("紧急程度", "Urgency"),
    "list.patient": ("患者", "Patient"),
    "list.reason": ("原因", "Reason"),
    "list.from": ("转出医院", "From"),
    "list.to": ("接收医院", "To"),
    "list.status": ("状态", "Status"),
    "list.deadline": ("接受时限", "Deadline"),
    "list.created": ("发起时间", "Sent"),
    "list.empty_inbox": ("目前没有转入的转诊。", "No referrals in your inbox."),
    "list.empty_outbox": ("还没有发出转诊。", "No referrals sent yet."),
    "list.new_event": ("{what}：{reason}", "{what}: {reason}"),
    "detail.title": ("转诊详情", "Referral"),
    "detail.from_to": ("{from} → {to}", "{from} → {to}"),
    "detail.reason": ("原因", "Reason"),
    "detail.specialty": ("专科", "Specialty"),
    "detail.note": ("说明", "Note"),
    "detail.created": ("发起", "Sent"),
    "detail.deadline": ("接受时限", "Accept by"),
    "detail.scheduled": ("预约时间", "Scheduled"),
    "detail.routing": ("推荐理由", "Why this hospital"),
    # Routing's reasons, by their code (referral.routing); {anchor} is one of route.anchor.*.
    "route.alliance-none": ("转出医院不属于任何医联体", "the origin belongs to no medical alliance"),
    "route.alliance-same": ("同一医联体（{alliance}）", "same medical alliance ({alliance})"),
    "route.alliance-other": ("不在转出医院的医联体内", "not in the origin's medical alliance"),
    "route.near-unknown": ("行政区划不明，未计远近", "division unknown, nearness not judged"),
    "route.near-county": ("与{anchor}同县（{place}）", "same county ({place}) as {anchor}"),
    "route.near-city": ("与{anchor}同市（{place}）", "same city ({place}) as {anchor}"),
    "route.near-province": ("与{anchor}同省（{place}）", "same province ({place}) as {anchor}"),
    "route.near-outside": ("与{anchor}不在同一省", "not in the same province as {anchor}"),
    "route.anchor.origin": ("转出医院", "the origin"),
    "route.anchor.home": ("患者住址", "the patient's home"),
    "route.home-unknown": ("（患者住址不明）", " (patient's home unknown)"),
    "route.capacity": ("今日尚余 {free}/{total} 个名额", "{free} of {total} places free today"),
    "route.speed-none": ("近 30 天无接收记录，按中等计", "no acceptances in 30 days to judge by (counted as neutral)"),
    "route.speed-median": ("近 30 天接收用时中位数 {minutes} 分钟", "median {minutes} min to accept over 30 days"),
    "route.lacks-capability": ("缺少所需能力：{capability}", "lacks capability {capability}"),
    "route.not-accepting": ("暂停接收转诊", "not accepting referrals"),
    "route.no-capacity": ("今日名额已满（{used}/{total}）", "no capacity left today ({used}/{total})"),
    "route.not-offered": ("未开设该专科", "does not offer this specialty"),
    "route.is-origin": ("即转出医院本身", "is the referring hospital itself"),
    "route.already-tried": ("已转诊过", "already tried"),
    "route.tier-not-above": ("{tier} 级医院，不高于转出医院（{originTier} 级）", "tier {tier} is not above the origin's tier {originTier}"),
    "route.tier-not-below": ("{tier} 级医院，不低于转出医院（{originTier} 级）", "tier {tier} is not below the origin's tier {originTier}"),
    "detail.patient": ("患者", "Patient"),
    "detail.patient_hidden": ("接受转诊后可查看患者信息（需患者同意）。",
                              "The patient's details are shared once you accept (with the patient's consent)."),
    "detail.shared": ("共享的记录", "Shared records"),
    "detail.shared_hidden": ("接受转诊后，可在患者同意范围内查看这些记录。",
                             "These records can be read once the referral is accepted, as far as the patient "
                             "consented."),
    "detail.shared_none": ("没有附加记录。", "No records attached."),
    "detail.history": ("经过", "History"),
    "detail.actions": ("处理", "Actions"),
    "detail.accept": ("接受转诊", "Accept"),
    "detail.receive": ("确认收到", "Mark as received"),
    "detail.reject": ("拒绝", "Reject"),
    "detail.reject_reason": ("拒绝原因", "Reason for rejecting"),
    "detail.schedule": ("预约", "Schedule"),
    "detail.schedule_at": ("预约就诊时间", "Appointment time"),
    "detail.arrive": ("患者已到院", "Patient has arrived"),
    "detail.complete": ("完成并回传出院小结", "Complete with the discharge summary"),
    "detail.summary_text": ("出院小结", "Discharge summary"),
    "detail.summary_title": ("出院小结 Discharge summary", "Discharge summary"),
    "detail.cancel": ("取消转诊", "Cancel the referral"),
    "detail.cancel_reason": ("取消原因", "Reason for cancelling"),
    "detail.refer_back": ("下转回基层医院", "Refer back to the county hospital"),
    "detail.refer_back_note": ("下转说明（康复与随访计划）", "Note (recovery and follow-up plan)"),
    "detail.no_actions": ("目前没有需要您处理的事项。", "Nothing for you to do now."),
    "detail.outcome": ("诊疗结果", "Outcome"),
    "detail.outcome_none": ("尚未回传出院小结。", "No discharge summary yet."),
    "detail.consults": ("远程会诊", "Remote consults"),
    "detail.consult_start": ("发起远程会诊", "Start a remote consult"),
    "detail.consult_join": ("加入会诊", "Join the consult"),
    "detail.consult_enter": ("进入会诊室", "Enter the consult room"),
    "detail.consult_none": ("还没有会诊。", "No consults yet."),
    "detail.consult_after_accept": ("接收医院接受转诊后，可发起远程会诊。",
                                    "A consult can be started once the receiving hospital has accepted."),
    "detail.consult_status.planned": ("待开始", "not started"),
    "detail.consult_status.in-progress": ("进行中", "in progress"),
    "detail.consult_status.finished": ("已结束", "ended"),
    "detail.opinion": ("会诊意见", "Consult opinion"),
    # A Composition's section titles as the services write them (teleconsult.models.OPINION_SECTION).
    "section.consult opinion": ("会诊意见", "Consult opinion"),
    # The system's own reasons in a referral's history, by their code.
    "why.escalated": ("{from} 未在时限内接收，已改派至 {to}", "deadline passed at {from}; sent to {to}"),
    "why.consult-opinion": ("意见已写入病历，见“诊疗结果”", "written to the record: see the outcome"),
    "why.consult-end-empty": ("所有人已离开", "everyone left"),
    "why.consult-end-host": ("主持人结束了会诊", "ended by the host"),
    "why.consult-end-hub-stopped": ("会诊服务已停止", "the media host stopped"),
    "detail.done": ("已完成：{what}", "Done: {what}"),
    "detail.history_action.create": ("发起转诊", "sent"),
    "detail.history_action.consult-opinion": ("写入会诊意见", "wrote the consult opinion"),
    "detail.history_action.consult-start": ("发起远程会诊", "started a remote consult"),
    "detail.history_action.consult-live": ("进入会诊室，会诊开始", "entered the room; the consult began"),
    "detail.history_action.consult-end": ("远程会诊结束", "the remote consult ended"),
    "detail.history_action.refer-back": ("下转", "referred back"),
    "my.title": ("我的转诊与会诊", "My referrals and consults"),
    "my.referrals": ("转诊", "Referrals"),
    "my.consults": ("远程会诊", "Remote consults"),
    "my.none": ("您还没有转诊记录。", "You have no referrals."),
    "my.consults_none": ("您还没有远程会诊。", "You have no remote consults."),
    "my.join": ("加入会诊", "Join the consult"),
    "my.address": ("地址", "Address"),
    "my.phone": ("电话", "Phone"),
    "admin.title": ("转诊统计", "Referral dashboard"),
    "admin.flows": ("每月转诊量（按方向）", "Referrals per month, up and down"),
    "admin.flows_city": ("各市转诊量", "Referrals by city"),
    "admin.city": ("城市", "City"),
    "admin.month": ("月份", "Month"),
    "admin.up": ("上转", "Up"),
    "admin.down": ("下转", "Down"),
    "admin.accept_times": ("接受用时（近 30 天）", "Time to accept (last 30 days)"),
    "admin.median": ("中位数 {n} 分钟", "median {n} min"),
    "admin.p90": ("90% 在 {n} 分钟内", "90% within {n} min"),
    "admin.accepted_count": ("共 {n} 例被接受", "{n} accepted"),
    "admin.by_target": ("各医院接受用时中位数（分钟）", "Median minutes to accept, by hospital"),
    "admin.sla": ("超时（SLA 违约）", "Missed deadlines (SLA breaches)"),
    "admin.escalated": ("每月超时改派数", "Escalated per month"),
    "admin.failed": ("最终无医院接受：{n} 例", "Never accepted: {n}"),
    "admin.rejections": ("拒绝原因", "Reasons for rejecting"),
    "admin.computed": ("统计时间 {when}", "Computed {when}"),
    "admin.no_data": ("还没有转诊数据。", "No referrals yet."),
    "admin.count": ("例数", "Referrals"),
    "directory.title": ("机构目录", "Directory"),
    "directory.find": ("按名称查找医院", "Find a hospital by name"),
    "directory.hospitals": ("医院", "Hospitals"),
    "directory.tier": ("等级", "Tier"),
    "directory.active": ("启用", "Active"),
    "directory.services": ("{name} 的科室与号源", "Departments and capacity of {name}"),
    "directory.choose": ("选择一家医院以编辑其科室、号源和接收状态。",
                         "Choose a hospital to edit its departments, capacity and whether they take referrals."),
    "directory.service": ("科室", "Department"),
    "directory.capabilities": ("诊疗能力", "Capabilities"),
    "directory.capacity": ("每日转诊号源", "Referrals per day"),
    "directory.accepting": ("接收转诊", "Takes referrals"),
    "directory.edit": ("编辑", "Edit"),
    "directory.hospital_name": ("医院名称", "Hospital name"),
    "directory.add_service": ("新增科室", "Add a department"),
    "directory.specialty_code": ("专科代码（如 cardiology）", "Specialty code (e.g. cardiology)"),
    "directory.service_name": ("科室名称", "Department name"),
    "directory.none": ("没有找到医院。", "No hospital found."),
    "users.title": ("用户", "Users"),
    "users.intro": ("医生和管理员的账号。患者账号不在此列出：管理员不查看临床数据。",
                    "Accounts of doctors and administrators. Patients are not listed: administrators see no "
                    "clinical data."),
    "users.find_title": ("查找账号", "Find accounts"),
    "users.role_all": ("全部", "All"),
    "users.role.practitioner": ("医生", "Doctor"),
    "users.role.admin": ("管理员", "Administrator"),
    "users.find": ("按机构名称筛选", "Filter by hospital name"),
    "users.name": ("姓名", "Name"),
    "users.login": ("登录名", "Login"),
    "users.login_hint": ("医生的登录名是其执业证号。", "A doctor's login is their practitioner number."),
    "users.org": ("机构", "Hospital"),
    "users.org_find": ("查找机构（输入名称）", "Find the hospital (type its name)"),
    "users.org_type": ("请先输入机构名称", "Type the hospital's name first"),
    "users.org_none": ("没有找到机构", "No hospital found"),
    "users.specialty_optional": ("专科（可选）", "Specialty (optional)"),
    "users.role": ("角色", "Role"),
    "users.status": ("状态", "Status"),
    "users.active": ("正常", "active"),
    "users.disabled": ("已停用", "disabled"),
    "users.locked": ("已锁定至 {when}", "locked until {when}"),
    "users.actions": ("操作", "Actions"),
    "users.disable": ("停用", "Disable"),
    "users.enable": ("启用", "Enable"),
    "users.unlock": ("解锁", "Unlock"),
    "users.reset": ("重置密码", "Reset the password"),
    "users.new_password": ("{name} 的新密码", "New password for {name}"),
    "users.password": ("密码", "Password"),
    "users.password_hint": ("至少 10 个字符，包含字母以及数字或符号，且不含登录名。",
                            "At least 10 characters, letters with digits or signs, not containing the login."),
    "users.new": ("新建账号", "New account"),
    "users.create": ("创建账号", "Create the account"),
    "users.created": ("已创建账号：{name}", "Account created: {name}"),
    "users.need_org": ("医生账号需要选择所在机构。", "A doctor's account needs their hospital."),
    "users.done.disable": ("已停用：{name}", "Disabled: {name}"),
    "users.done.enable": ("已启用：{name}", "Enabled: {name}"),
    "users.done.unlock": ("已解锁：{name}", "Unlocked: {name}"),
    "users.done.password": ("已重置密码：{name}", "Password reset: {name}"),
    "users.range": ("第 {from}–{to} 条，共 {total} 条", "{from}–{to} of {total}"),
    "users.prev": ("上一页", "Previous page"),
    "users.next": ("下一页", "Next page"),
    "users.none": ("没有找到用户。", "No users found."),
    "users.resident_title": ("居民账号（帮助台）", "A resident's account (help desk)"),
    "users.resident_hint": ("居民账号不会列出。请输入居民本人出示的身份证号，只能解锁或重置密码。",
                            "Residents' accounts are never listed. Type the ID number the resident shows you; you "
                            "can only unlock the account or set a new password."),
    "users.resident_id": ("居民身份证号", "Resident's ID number"),
    "users.resident_none": ("没有使用这个身份证号的账号。", "No account uses this ID number."),
    "users.role.patient": ("居民", "Resident"),
})


@router.get("/referrals/new")
async def new_referral(request: Request, patient: str = "") -> Response:
    caller = await web.page_caller(request, ["practitioner"])
    return web.render(request, "referral_new.html", caller, "new.title", page={"patient": patient})


@router.get("/referrals/inbox")
async def inbox(request: Request) -> Response:
    caller = await web.page_caller(request, ["practitioner"])
    return web.render(request, "referral_list.html", caller, "list.inbox", box="inbox", page={"box": "inbox"})


@router.get("/referrals/outbox")
async def outbox(request: Request) -> Response:
    caller = await web.page_caller(request, ["practitioner"])
    return web.render(request, "referral_list.html", caller, "list.outbox", box="outbox", page={"box": "outbox"})


@router.get("/referrals/{referral_id}")
async def referral_page(request: Request, referral_id: str) -> Response:
    caller = await web.page_caller(request, ["practitioner"])
    return web.render(request, "referral.html", caller, "detail.title", page={"referral": referral_id})


@router.get("/me/referrals")
async def my_referrals(request: Request) -> Response:
    caller = await web.page_caller(request, ["patient"])
    return web.render(request, "my_referrals.html", caller, "my.title", page={"patient": caller.patient_id})


@router.get("/admin")
async def dashboard(request: Request) -> Response:
    caller = await web.page_caller(request, ["admin"])
    return web.render(request, "admin_dashboard.html", caller, "admin.title")


@router.get("/admin/directory")
async def directory(request: Request) -> Response:
    caller = await web.page_caller(request, ["admin"])
    return web.render(request, "admin_directory.html", caller, "directory.title")


@router.get("/admin/users")
async def users(request: Request) -> Response:
    caller = await web.page_caller(request, ["admin"])
    return web.render(request, "admin_users.html", caller, "users.title")

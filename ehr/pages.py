"""The record's part of the portals: patient search and chart for doctors; my record, my card, my access log."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from qilu import web

router = APIRouter(include_in_schema=False)

web.add_messages({
    "patients.title": ("查找患者", "Find a patient"),
    "patients.by_name": ("姓名", "Name"),
    "patients.by_id": ("身份证号", "National ID number"),
    "patients.search": ("查找", "Search"),
    "patients.search_hint": ("输入姓名或身份证号；也可以粘贴或上传患者的电子健康卡二维码。",
                             "Enter a name or an ID number; or paste or upload the patient's e-health card QR code."),
    "patients.card": ("电子健康卡", "E-health card"),
    "patients.card_code": ("粘贴二维码内容", "Paste the QR code's text"),
    "patients.card_image": ("上传二维码图片", "Upload a picture of the QR code"),
    "patients.card_verify": ("核验", "Verify"),
    "patients.card_ok": ("已核验：{name}，{gender}，{birth}，身份证 {id}", "Verified: {name}, {gender}, {birth}, ID {id}"),
    "patients.card_no_reader": ("无法加载二维码识别组件，请粘贴二维码内容。",
                                "The QR code reader could not be loaded; paste the code's text instead."),
    "patients.card_unreadable": ("图片中没有找到二维码，请重新拍摄或粘贴内容。",
                                 "No QR code was found in the picture; try another one or paste the text."),
    "patients.results": ("查找结果", "Results"),
    "patients.none": ("没有找到符合条件的患者（只显示本院管理和转诊共享给本院的患者）。",
                      "No patient matches (only your hospital's patients and those shared with it are shown)."),
    "patients.need_query": ("请输入姓名或身份证号。", "Enter a name or an ID number."),
    "patients.open_chart": ("查看病历", "Open the chart"),
    "chart.title": ("患者病历", "Patient chart"),
    "chart.summary": ("基本信息", "Summary"),
    "chart.problems": ("问题列表（诊断）", "Problems"),
    "chart.medications": ("用药", "Medications"),
    "chart.allergies": ("过敏", "Allergies"),
    "chart.timeline": ("就诊时间线", "Encounter timeline"),
    "chart.vitals": ("体征与化验趋势", "Vital signs and labs over time"),
    "chart.bp": ("血压", "Blood pressure"),
    "chart.systolic": ("收缩压", "Systolic"),
    "chart.diastolic": ("舒张压", "Diastolic"),
    "chart.bp_band": ("收缩压正常上限 90–140", "Systolic normal range 90–140"),
    "chart.bp_summary": ("共 {n} 次测量；最近一次 {date}：{sys}/{dia} mmHg；收缩压最高 {max}。",
                         "{n} readings; latest on {date}: {sys}/{dia} mmHg; highest systolic {max}."),
    "chart.glucose": ("空腹血糖", "Fasting glucose"),
    "chart.glucose_band": ("正常范围 3.9–6.1", "Normal range 3.9–6.1"),
    "chart.hba1c": ("糖化血红蛋白 HbA1c", "HbA1c"),
    "chart.hba1c_band": ("目标 4–6%", "Target 4–6%"),
    "chart.series_summary": ("共 {n} 次；最近一次 {date}：{value} {unit}；范围 {min}–{max}。",
                             "{n} results; latest on {date}: {value} {unit}; range {min}–{max}."),
    "chart.no_bp": ("暂无血压记录。", "No blood pressure readings yet."),
    "chart.no_glucose": ("暂无血糖记录。", "No glucose results yet."),
    "chart.no_hba1c": ("暂无糖化血红蛋白记录。", "No HbA1c results yet."),
    "chart.no_problems": ("无在册诊断。", "No problems recorded."),
    "chart.no_medications": ("无在用药物。", "No medications recorded."),
    "chart.no_allergies": ("无已知过敏。", "No known allergies."),
    "chart.no_encounters": ("暂无就诊记录。", "No encounters yet."),
    "chart.name": ("姓名", "Name"),
    "chart.gender": ("性别", "Sex"),
    "chart.birth": ("出生日期", "Born"),
    "chart.id_number": ("身份证号", "ID number"),
    "chart.phone": ("电话", "Phone"),
    "chart.address": ("住址", "Address"),
    "chart.managed_by": ("管理机构", "Managed by"),
    "chart.since": ("起病 {date}", "since {date}"),
    "chart.status_active": ("活动", "active"),
    "chart.status_resolved": ("已缓解", "resolved"),
    "chart.new_referral": ("发起转诊", "Refer this patient"),
    "chart.referrals": ("转诊记录", "Referrals"),
    "chart.reaction": ("反应：{text}", "reaction: {text}"),
    "me.title": ("我的健康档案", "My health record"),
    "card.title": ("我的电子健康卡", "My e-health card"),
    "card.number": ("卡号", "Card number"),
    "card.status": ("状态", "Status"),
    "card.status_active": ("有效", "active"),
    "card.status_suspended": ("已挂失", "suspended"),
    "card.status_revoked": ("已注销", "revoked"),
    "card.qr_alt": ("电子健康卡二维码，就诊时出示给医院扫描", "E-health card QR code, to be scanned at the hospital"),
    "card.refresh_in": ("二维码 {n} 秒后自动刷新", "The code refreshes itself in {n} s"),
    "card.refreshing": ("正在刷新二维码…", "Refreshing the code…"),
    "card.shown_once": ("每个二维码只能扫描一次，60 秒内有效。", "Each code can be scanned once and is valid for 60 s."),
    "card.none": ("您还没有电子健康卡。可以在下方申领，或到就诊医院办理。",
                  "You have no e-health card yet. Apply below, or at your hospital."),
    "card.apply": ("申领电子健康卡", "Apply for an e-health card"),
    "card.apply_name": ("姓名（与身份证一致）", "Name (as on your ID card)"),
    "card.apply_id": ("身份证号", "National ID number"),
    "card.no_qr": ("此卡当前不可用，无法显示二维码。", "This card cannot be used now, so it shows no code."),
    "access.title": ("谁查看了我的档案", "Who looked at my records"),
    "access.intro": ("每一次查看或使用您的健康档案都会被记录。以下是他人查看的记录，最新的在前。",
                     "Every access to your health records is recorded. These are the accesses by others, "
                     "newest first."),
    "access.when": ("时间", "When"),
    "access.who": ("查看人", "Who"),
    "access.org": ("机构", "Hospital"),
    "access.what": ("操作", "What"),
    "access.why": ("目的", "Why"),
    "access.none": ("还没有他人查看过您的档案。", "Nobody else has looked at your records yet."),
    "access.more": ("加载更多", "Load more"),
    "access.refused": ("（被拒绝）", "(refused)"),
    # FHIR v3 ActEncounterCode: an encounter without a type is named by its class.
    "encounter.class.AMB": ("门诊", "outpatient visit"),
    "encounter.class.EMER": ("急诊", "emergency"),
    "encounter.class.IMP": ("住院", "inpatient stay"),
    "encounter.class.ACUTE": ("住院（急性期）", "acute inpatient stay"),
    "encounter.class.NONAC": ("住院（非急性期）", "non-acute inpatient stay"),
    "encounter.class.OBSENC": ("留观", "observation"),
    "encounter.class.SS": ("日间手术", "day surgery"),
    "encounter.class.HH": ("居家医疗", "home health"),
    "encounter.class.VR": ("远程诊疗", "remote visit"),
    "encounter.class.FLD": ("外出诊疗", "field visit"),
    "encounter.class.PRENC": ("诊前评估", "pre-admission"),
    "allergy.criticality.low": ("低风险", "low risk"),
    "allergy.criticality.high": ("高风险", "high risk"),
    "allergy.criticality.unable-to-assess": ("风险未评估", "risk not assessed"),
    "access.and": ("、", ", "),
})

# What an audited interaction is, in words a patient reads.
web.add_messages({
    "interaction.read": ("查看记录", "read a record"), "interaction.vread": ("查看记录", "read a record"),
    "interaction.search-type": ("检索记录", "searched records"),
    "interaction.history-type": ("查看修改历史", "read records' history"),
    "interaction.batch": ("批量查看或修改记录", "read or changed records together"),
    "interaction.transaction": ("批量修改记录", "changed records together"),
    "interaction.consult-search": ("查看会诊列表", "listed consults"),
    "interaction.export": ("导出档案", "exported your records"),
    "interaction.other": ("使用档案", "used your records"),
    "interaction.everything": ("查看全部档案", "read the whole record"),
    "interaction.create": ("新建记录", "added a record"), "interaction.update": ("修改记录", "changed a record"),
    "interaction.delete": ("删除记录", "deleted a record"),
    "interaction.history-instance": ("查看修改历史", "read a record's history"),
    "interaction.card-verify": ("扫描健康卡", "scanned your card"), "interaction.card-issue": ("发放健康卡", "issued your card"),
    "interaction.card-status": ("更改健康卡状态", "changed your card's status"),
    "interaction.consult-join": ("加入远程会诊", "joined a remote consult"),
    "interaction.referral-route": ("查询转诊医院", "looked for a hospital to refer you to"),
    "interaction.referral-create": ("发起转诊", "referred you"),
    "interaction.referral-read": ("查看转诊", "read your referral"),
    "interaction.referral-search": ("查看转诊列表", "listed referrals"),
    "interaction.referral-accept": ("接受转诊", "accepted your referral"),
    "interaction.referral-receive": ("接收转诊", "received your referral"),
    "interaction.referral-complete": ("完成转诊", "completed your referral"),
    "interaction.referral-reject": ("拒绝转诊", "rejected your referral"),
    "interaction.referral-schedule": ("预约就诊", "scheduled your visit"),
    "interaction.referral-arrive": ("登记到院", "recorded your arrival"),
    "interaction.referral-cancel": ("取消转诊", "cancelled your referral"),
    "interaction.referral-refer-back": ("下转回基层", "referred you back"),
})


@router.get("/patients")
async def patients(request: Request) -> Response:
    caller = await web.page_caller(request, ["practitioner"])
    return web.render(request, "patients.html", caller, "patients.title")


@router.get("/patients/{patient_id}")
async def chart(request: Request, patient_id: str) -> Response:
    caller = await web.page_caller(request, ["practitioner"])
    return web.render(request, "chart.html", caller, "chart.title", page={"patient": patient_id})


@router.get("/me")
async def my_record(request: Request) -> Response:
    caller = await web.page_caller(request, ["patient"])
    return web.render(request, "me.html", caller, "me.title", page={"patient": caller.patient_id})


@router.get("/me/card")
async def my_card(request: Request) -> Response:
    caller = await web.page_caller(request, ["patient"])
    return web.render(request, "card.html", caller, "card.title")


@router.get("/me/access")
async def my_access_log(request: Request) -> Response:
    caller = await web.page_caller(request, ["patient"])
    return web.render(request, "access.html", caller, "access.title")

"""The consult room page: local and remote video, mute, camera off, chat, sharing a record, consent to the
recording, and the consult opinion form."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from qilu import web

router = APIRouter(include_in_schema=False)

web.add_messages({
    "room.title": ("远程会诊室", "Consult room"),
    "room.about": ("会诊", "Consult"),
    "room.consent": ("我同意本次会诊被录像（所有在场者都同意时才录像）",
                     "I agree to this consult being recorded (it records only while everyone present agrees)"),
    "room.join": ("加入会诊", "Join the consult"),
    "room.joining": ("正在连接…", "Connecting…"),
    "room.joined": ("已加入会诊。", "You have joined the consult."),
    "room.leave": ("离开", "Leave"),
    "room.left": ("您已离开会诊。", "You have left the consult."),
    "room.end": ("结束会诊", "End the consult"),
    "room.ended": ("会诊已结束。", "The consult has ended."),
    "room.you": ("我", "Me"),
    "room.local_video": ("我的画面", "My camera"),
    "room.remote_video": ("{name} 的画面", "{name}'s video"),
    "room.waiting": ("等待其他参加者加入…", "Waiting for the others to join…"),
    "room.mute": ("静音", "Mute"),
    "room.unmute": ("取消静音", "Unmute"),
    "room.camera_off": ("关闭摄像头", "Camera off"),
    "room.camera_on": ("打开摄像头", "Camera on"),
    "room.no_camera": ("无法使用摄像头或麦克风：{detail}。您仍可以文字交流。",
                       "The camera or microphone cannot be used: {detail}. You can still chat."),
    "room.people": ("参加者", "People here"),
    "room.recording_on": ("● 正在录像", "● Recording"),
    "room.recording_off": ("未录像", "Not recording"),
    "room.chat": ("文字交流", "Chat"),
    "room.chat_message": ("消息", "Message"),
    "room.send": ("发送", "Send"),
    "room.chat_empty": ("还没有消息。", "No messages yet."),
    "room.share": ("共享一份记录", "Share a record"),
    "room.share_pick": ("选择记录", "Record"),
    "room.share_note": ("说明（可选）", "Note (optional)"),
    "room.share_send": ("共享", "Share"),
    "room.shared": ("{name} 共享了：{what}", "{name} shared: {what}"),
    "room.share_none": ("没有可共享的记录。", "No records to share."),
    "room.opinion": ("会诊意见", "Consult opinion"),
    "room.opinion_text": ("意见内容", "Opinion"),
    "room.opinion_final": ("定稿", "Final"),
    "room.opinion_submit": ("提交会诊意见", "Submit the opinion"),
    "room.opinion_saved": ("会诊意见已写入病历。", "The opinion is written to the record."),
    "room.error": ("会诊连接出错：{detail}", "Consult connection problem: {detail}"),
    "room.closed": ("连接已断开（{detail}）。", "The connection closed ({detail})."),
    "room.back": ("返回转诊", "Back to the referral"),
    "room.media_connecting": ("正在建立音视频连接…", "Connecting audio and video…"),
    "room.media_ok": ("音视频已连接。", "Audio and video connected."),
    "room.play": ("播放 {name} 的画面", "Play {name}'s video"),
})


@router.get("/consults/{consult_id}")
async def consult_room(request: Request, consult_id: str) -> Response:
    caller = await web.page_caller(request, ["practitioner", "patient"])
    # No token in the page: the signaling WebSocket is opened with the same session cookie as the page.
    return web.render(request, "consult.html", caller, "room.title", page={"consult": consult_id})

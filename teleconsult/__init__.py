"""Remote consultations: signaling, the aiortc media hub, recording, chat and write-back to the record."""

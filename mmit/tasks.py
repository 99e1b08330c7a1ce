"""Task families: which metrics score a task (``mmit.scoring``) and how its blind prior counts
answers (``mmit.grounding``). A task's family is named here, else read from its prefix."""

from __future__ import annotations

# How each task is scored: its family's metrics (``mmit.scoring.task_metrics``), the first of them the headline.
# Audio and video tasks are scored as the image task they resemble; a task not named here by its
# prefix (caption_*, vqa_*), else as free text.
FAMILY = {
    "vqa_multiple_choice": "choice",
    "vqa_yesno": "vqa_yesno",
    "video_yesno": "yesno",
    "compare_statement": "yesno",  # a statement about several images, true or false (NLVR2)
    "av_yesno": "yesno",  # about a clip's frames and sound track together
    "audio_qa": "short",  # one reference answer: exact-match accuracy
    "video_qa": "short",
    "video_order": "short",  # which of two named events or colours comes first
    "compare_qa": "short",  # which image has more shapes, is different, ...
    "av_qa": "short",  # which colour appears when the beep sounds
    "audio_caption": "caption",
    "video_caption": "caption",
    "video_dense_caption": "caption",
    "video_temporal": "caption",  # what happens between two times: one event's sentence
    "audio_transcription": "transcription",
}
YES_NO = ("vqa_yesno", "yesno")  # the families answered "yes" or "no"


def family(task: str) -> str:
    if task in FAMILY:
        return FAMILY[task]
    return "caption" if task.startswith("caption") else "vqa" if task.startswith("vqa") else "text"

"""A deterministic scripted model standing in for an LLM, so the demo runs offline.

It reads the facts a real model would be given from the prompt and answers with the
structured output, a rationale, token counts and a cost estimate — journaled like any
model call."""

from __future__ import annotations

import re
from typing import Any

from agents.llm import register_model

PRICE_PER_1K_TOKENS_EUR = 0.002
_NUMBER = r"(-?\d+(?:\.\d+)?)"


def _find(pattern: str, text: str, default: float = 0.0) -> float:
    match = re.search(pattern, text)
    return float(match.group(1)) if match else default


def _assess_claim(prompt: str) -> tuple[dict[str, Any], str]:
    amount = _find(rf"claimed {_NUMBER} EUR", prompt)
    if re.search(r"\b(duplicate|fraud|staged)\b", prompt, re.IGNORECASE):
        return (
            {"decision": "decline", "amount": 0, "reason": "signs of a duplicate or staged claim"},
            "The description matches patterns of duplicate claims; decline.",
        )
    covered = round(amount * 0.95, 2) if "partial" in prompt else amount
    return (
        {"decision": "pay", "amount": covered, "reason": "covered by the policy"},
        f"Damage is covered; the documented loss supports a payout of {covered:.2f} EUR.",
    )


def _plan_reorder(prompt: str) -> tuple[dict[str, Any], str]:
    on_hand = _find(rf"on hand {_NUMBER}", prompt)
    point = _find(rf"reorder point {_NUMBER}", prompt)
    if on_hand >= point:
        return {"quantity": 0}, f"Stock {on_hand:.0f} is above the reorder point {point:.0f}."
    quantity = int((point * 2 - on_hand) // 10 * 10) or 10
    return (
        {"quantity": quantity},
        f"Stock {on_hand:.0f} is below {point:.0f}; order {quantity} to cover two cycles.",
    )


def _draft_email(prompt: str) -> tuple[dict[str, Any], str]:
    topic = re.search(r"about: (.+)$", prompt, re.MULTILINE)
    subject = f"Re: {topic.group(1).strip()[:80]}" if topic else "Your request"
    body = (
        "Hello,\n\nthank you for getting in touch. We have looked into your request and "
        "will follow up within two working days.\n\nKind regards,\nCustomer Care"
    )
    return {"subject": subject, "body": body}, "A short acknowledgement with a clear next step."


_SCRIPTS = {
    "assess claim": _assess_claim,
    "plan reorder": _plan_reorder,
    "draft email": _draft_email,
}


class ScriptedModel:
    name = "scripted"

    def complete(self, *, prompt: str, purpose: str, config: dict[str, Any]) -> dict[str, Any]:
        script = _SCRIPTS.get(purpose)
        if script is None:
            output: dict[str, Any] = {"text": "I have no script for this."}
            rationale = f"No scripted answer for purpose {purpose!r}."
        else:
            output, rationale = script(prompt)
        tokens_in = max(1, len(prompt) // 4)
        tokens_out = max(1, (len(str(output)) + len(rationale)) // 4)
        cost = round((tokens_in + tokens_out) / 1000 * PRICE_PER_1K_TOKENS_EUR, 6)
        return {
            "output": output,
            "rationale": rationale,
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "cost_eur": cost,
        }


register_model(ScriptedModel())

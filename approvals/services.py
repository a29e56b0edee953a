"""Approval requests and decisions (DESIGN section 5). The screens come with the queue;
the decision service is complete here so the resume path is real."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.core.exceptions import PermissionDenied
from django.db import connection, transaction
from django.db.models import Subquery
from django.db.models.expressions import RawSQL
from django.utils import timezone

from agents.gateway import args_hash
from agents.mcp.catalog import agent_tool
from agents.models import Action, Agent, Run
from agents.policy import (
    DEFAULT_APPROVAL_TIMEOUT,
    DEFAULT_ON_TIMEOUT,
    UNKNOWN_OUTCOME_TIMEOUT,
    Rule,
    policy_of,
)
from agents.registry import Tool
from agents.runtime import enqueue
from agents.services import Conflict, ServiceError, storable
from agents.stepwait import ring_run
from approvals import selectors
from approvals.models import ApprovalDecision, ApprovalRequest
from approvals.notifications import notify_on_commit
from approvals.selectors import NOT_YOURS, may_decide, refusal
from audit.services import (
    SYSTEM,
    Actor,
    audit_append_many,
    audit_record,
    audit_run,
    record_content,
)
from audit.verbs import Verb

if TYPE_CHECKING:
    from django.contrib.auth.models import User

# The decide rule's own messages (approvals.selectors), named here for the callers.
ALREADY_DECIDED = selectors.ALREADY_DECIDED
SELF_APPROVAL = selectors.SELF_APPROVAL
AUTHOR_APPROVAL = selectors.AUTHOR_APPROVAL
ALREADY_APPROVED_BY_YOU = selectors.ALREADY_APPROVED_BY_YOU
STALE_DECISION = "the action changed since you opened it; reload and decide again"
REJECT_NEEDS_REASON = "a rejection needs a reason: it is sent back to the agent"
EDIT_INVALID = "the edited arguments break the tool's schema: {errors}"
EDIT_DENIED = "the policy would deny the edited arguments: {reason}"
EDIT_SHADOWED = (
    "the policy only shadows the edited arguments ({reason}): they would never run for "
    "real, so they cannot be approved; approve the arguments as they were, or reject"
)
EDIT_NOT_YOURS = "the edited arguments fall under {rule}, which you may not approve"
BAD_VERDICT = "a decision is approve or reject"


class AlreadyDecided(Conflict):
    pass


def approval_request_open(*, action: Action, tool: Tool, rule: Rule | None) -> ApprovalRequest:
    run = action.run
    timeout = rule.timeout_seconds if rule else UNKNOWN_OUTCOME_TIMEOUT
    request = ApprovalRequest.objects.create(
        action=action,
        run=run,
        agent=run.agent,
        version=run.version,
        kind=ApprovalRequest.Kind.POLICY if rule else ApprovalRequest.Kind.UNKNOWN_OUTCOME,
        tool=tool.name,
        args=action.args,
        args_hash=action.args_hash,
        risk=tool.risk,
        rule_index=rule.index if rule else None,
        rule=rule.describe() if rule else None,
        required_approvals=rule.approvals if rule else 1,
        approver_group=rule.approvers if rule else "",
        on_timeout=rule.on_timeout if rule else DEFAULT_ON_TIMEOUT,
        due_at=timezone.now() + timedelta(seconds=timeout),
        launched_by_id=run.launched_by_id,
        policy_author_id=run.version.author_id,
    )
    audit_record(
        verb=Verb.APPROVAL_REQUESTED,
        actor=Actor.agent(run.agent),
        subject_type="approval",
        subject_id=request.pk,
        agent=run.agent,
        run=run,
        payload={
            "tool": tool.name,
            "args": action.args,
            "kind": request.kind,
            "required": request.required_approvals,
            "rule": request.rule,
        },
    )
    notify_on_commit(event="approval.requested", request_id=request.pk)
    return request


def _release(
    request: ApprovalRequest, *, status: str, action_status: str, args: Any, error: str
) -> None:
    """Settle the held action and hand its run back to a worker (or, for a remote agent,
    wake its long poll)."""
    now = timezone.now()
    ApprovalRequest.objects.filter(pk=request.pk).update(status=status, decided_at=now)
    request.status, request.decided_at = status, now
    # The rule the action is decided under: after an edit, the one its new arguments match.
    rule = {"rule_index": request.rule_index, "rule": request.rule} if request.rule else {}
    Action.objects.filter(pk=request.action_id, status__in=Action.UNDECIDED).update(
        status=action_status, args=args, args_hash=args_hash(args), error=error, **rule
    )
    if Run.objects.filter(
        pk=request.run_id, status=Run.Status.WAITING, wait_reason=Run.WaitReason.APPROVAL
    ).update(status=Run.Status.QUEUED, wait_reason="", enqueued_at=now):
        audit_run(
            Verb.RUN_QUEUED,
            actor=SYSTEM,
            run=request.run,
            payload={"why": f"approval {request.pk} {status}"},
        )
        enqueue(request.run_id)
    else:
        # A remote agent's run stays running while the agent polls for the decision: its
        # poll wakes once this commits (agents.stepwait).
        ring_run(request.run_id)
        Run.objects.filter(
            pk=request.run_id, status=Run.Status.RUNNING, wait_reason=Run.WaitReason.APPROVAL
        ).update(wait_reason="")


# The locks of `_lock_request` on Postgres, sent together: the run, the action, then the
# request (agents.store.LOCK_ORDER), each found through the request in its own statement.
_LOCKS = (
    "SELECT 1 FROM agents_run WHERE id = "
    "(SELECT run_id FROM approvals_approvalrequest WHERE id = %s) FOR NO KEY UPDATE;"
    "SELECT 1 FROM agents_action WHERE id = "
    "(SELECT action_id FROM approvals_approvalrequest WHERE id = %s) FOR NO KEY UPDATE;"
    "SELECT 1 FROM approvals_approvalrequest WHERE id = %s FOR NO KEY UPDATE"
)


def _lock_request(request_id: int, *, decider: User | None = None) -> ApprovalRequest:
    """Lock what settling a request changes, in agents.store.LOCK_ORDER: its run, its
    action, then the request; each row alone and FOR NO KEY UPDATE, so a run or step that
    holds the chain head can still check its foreign keys. The audit events come after.
    The run and the action are found through the request in the locking statement itself
    (a request's run and action never change), not by a read of their ids first.

    With a `decider`, the decide rule is asked too, after the locks (a statement of its
    own, so it sees every decision committed before them): the request's `approved` is
    how many approvals its current arguments have, or None if the person may not decide
    it. On Postgres the locks and the check are one round trip."""
    approved: int | None = None
    if connection.vendor == "postgresql":
        check = selectors.decide_check_sql(decider, request_id) if decider else None
        sql, params = _LOCKS, [request_id] * 3
        if check is not None:
            sql, params = f"{sql};{check[0]}", [*params, *check[1]]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            if check is not None:
                for _ in range(3):
                    cursor.nextset()
                row = cursor.fetchone()
                approved = None if row is None else int(row[0])
        rows = ApprovalRequest.objects.all()
    else:
        ids = ApprovalRequest.objects.filter(pk=request_id)
        run_id = Subquery(ids.values("run_id")[:1])
        list(Run.objects.select_for_update(no_key=True).filter(pk=run_id).values_list("pk"))
        action_id = Subquery(ids.values("action_id")[:1])
        list(Action.objects.select_for_update(no_key=True).filter(pk=action_id).values_list("pk"))
        rows = ApprovalRequest.objects.select_for_update(of=("self",), no_key=True)
    # Locked already on Postgres: read as it stands.
    request = rows.select_related("agent__team", "run", "version").filter(pk=request_id).first()
    if request is None:
        raise ApprovalRequest.DoesNotExist(f"no approval request {request_id}")
    if decider is not None and connection.vendor != "postgresql":
        approved = selectors.decide_check(decider, request_id)
    request.approved = approved  # type: ignore[attr-defined]
    # The run's agent is the request's (both are the action's): its audit events need it,
    # and it is loaded already.
    if request.run.agent_id == request.agent_id:
        request.run.agent = request.agent
    return request


def approval_decide(
    *,
    request_id: int,
    user: User,
    verdict: str,
    seen_args_hash: str,
    comment: str = "",
    edited_args: dict[str, Any] | None = None,
) -> ApprovalRequest:
    """One decision on a request. Every decision takes this path: the request page, the
    queue's batch, and the held steps of hosted and remote agents alike.

    An edit is decided under the rule its edited arguments match (DESIGN section 5): the
    run's policy is asked again, in full. `deny` and `shadow` are refused (a shadow rule
    would never run the edited action for real, which is not what approving means);
    `allow` makes this approval enough; another `approve` rule rebinds the request to its
    approvals, approver group and timeout, and the editor must be one of its deciders.

    Durable: the decision, its audit event and the run's release commit together or not
    at all, and the run is handed to a worker only once they have."""
    comment, edited_args = _decision_input(verdict, comment, edited_args)
    with transaction.atomic(durable=True):
        request = _lock_request(request_id, decider=user)
        approved = _decider_check(user, request, seen_args_hash)
        before = args = request.args
        allowed = False
        if edited_args is not None and verdict == ApprovalDecision.Verdict.APPROVE:
            args, allowed = _edit_apply(request, user, edited_args)
        approvals = _decision_record(
            request,
            user=user,
            verdict=verdict,
            comment=comment,
            edited_args=edited_args,
            args=args,
            approved=approved if args == before else None,
        )
        verb, release = _outcome(
            request,
            user=user,
            verdict=verdict,
            comment=comment,
            args=args,
            enough=allowed or approvals >= request.required_approvals,
        )
        _decision_audit(
            request,
            user=user,
            verb=verb,
            payload={
                "verdict": verdict,
                "comment": comment,
                "args": args,
                "edited": edited_args is not None,
                "approvals": approvals,
                "required": request.required_approvals,
                **({"rule": request.rule} if args != before else {}),
            },
        )
        if release is not None:
            _release(request, **release)
    # What the transaction changed is set on the instance as it was written: no re-read.
    return request


def _decision_input(
    verdict: str, comment: str, edited_args: dict[str, Any] | None
) -> tuple[str, dict[str, Any] | None]:
    """The decision as the trail stores it, or why it is refused; before any lock."""
    comment = comment.strip()
    if verdict not in ApprovalDecision.Verdict.values:
        raise ServiceError(BAD_VERDICT)
    if verdict == ApprovalDecision.Verdict.REJECT and not comment:
        raise ServiceError(REJECT_NEEDS_REASON)
    comment = storable(comment, "comment")
    if edited_args is not None:
        edited_args = storable(edited_args, "arguments")
    return comment, edited_args


def _decider_check(user: User, request: ApprovalRequest, seen_args_hash: str) -> int:
    """The person may decide this request, and decides what it holds now. Returns how many
    approvals its current arguments have already (asked with the locks)."""
    approved: int | None = request.approved  # type: ignore[attr-defined]
    if approved is None:
        raise _refusal(user, request)
    if seen_args_hash != request.args_hash:
        raise Conflict(STALE_DECISION)
    return approved


def _edit_apply(
    request: ApprovalRequest, user: User, edited_args: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """The arguments the action will run with, and whether the rule they fall under allows
    it outright. A real change rebinds the request to that rule (`_rebind`), whose
    deciders the editor must be among."""
    args = _check_edit(request, edited_args)
    if args == request.args:
        return args, False
    allowed = _rebind(request, args)
    if not may_decide(user, request):
        # Raised inside the transaction: the request is as it was.
        why = refusal(user, request)
        if why == NOT_YOURS:
            why = EDIT_NOT_YOURS.format(rule=_rule_name(request))
        raise ServiceError(why)
    return args, allowed


def _decision_record(
    request: ApprovalRequest,
    *,
    user: User,
    verdict: str,
    comment: str,
    edited_args: dict[str, Any] | None,
    args: dict[str, Any],
    approved: int | None,
) -> int:
    """Store the decision; returns how many approvals the arguments it runs with now have
    (only approvals of those arguments count). `approved`: how many they had before this
    decision, when the decider check counted them (the arguments were not edited)."""
    ApprovalDecision.objects.create(
        request=request,
        user=user,
        verdict=verdict,
        comment=comment,
        edited_args=edited_args,
        args_hash=args_hash(args),
        launched_by_id=request.launched_by_id,
        policy_author_id=request.policy_author_id,
    )
    if approved is not None:
        return approved + 1 if verdict == ApprovalDecision.Verdict.APPROVE else approved
    return request.decisions.filter(
        verdict=ApprovalDecision.Verdict.APPROVE, args_hash=args_hash(args)
    ).count()


def _outcome(
    request: ApprovalRequest,
    *,
    user: User,
    verdict: str,
    comment: str,
    args: dict[str, Any],
    enough: bool,
) -> tuple[Verb, dict[str, Any] | None]:
    """The decision's verb, and, when it settles the request, how (`_release`'s terms): a
    rejection settles it at once; an approval once there are enough of them."""
    if verdict == ApprovalDecision.Verdict.REJECT:
        return Verb.APPROVAL_REJECTED, {
            "status": ApprovalRequest.Status.REJECTED,
            "action_status": Action.Status.REJECTED,
            "args": request.args,
            "error": f"rejected by {user.get_username()}: {comment}",
        }
    if enough:
        return Verb.APPROVAL_APPROVED, {
            "status": ApprovalRequest.Status.APPROVED,
            "action_status": Action.Status.APPROVED,
            "args": args,
            "error": "",
        }
    return Verb.APPROVAL_DECISION, None


def _decision_audit(
    request: ApprovalRequest, *, user: User, verb: Verb, payload: dict[str, Any]
) -> None:
    audit_record(
        verb=verb,
        actor=Actor.user(user),
        subject_type="approval",
        subject_id=request.pk,
        agent=request.agent,
        run=request.run,
        payload=payload,
    )


def _refusal(user: User, request: ApprovalRequest) -> Exception:
    """Why `may_decide` said no, as the exception the callers expect."""
    why = refusal(user, request)
    if request.status != ApprovalRequest.Status.PENDING:
        return AlreadyDecided(why)
    if why == NOT_YOURS:
        return PermissionDenied(why)
    return ServiceError(why)


def _check_edit(request: ApprovalRequest, edited: Any) -> dict[str, Any]:
    # `edited` is plain JSON already: approval_decide made it storable on the way in.
    if not isinstance(edited, dict):
        raise ServiceError(EDIT_INVALID.format(errors="arguments: must be an object"))
    errors = agent_tool(request.agent_id, request.tool).argument_errors(edited)
    if errors:
        raise ServiceError(EDIT_INVALID.format(errors="; ".join(errors)))
    return edited


def _rebind(request: ApprovalRequest, args: dict[str, Any]) -> bool:
    """Bind the request to the edited arguments and to the rule they match, asking the
    run's policy exactly as the gateway does. True when that rule allows the action
    outright; raises when it denies or only shadows it."""
    policy = policy_of(request.version)
    verdict = policy.decide(request.tool, args)
    if verdict.effect == "deny":
        raise ServiceError(EDIT_DENIED.format(reason=verdict.reason))
    if verdict.effect == "shadow":
        raise ServiceError(EDIT_SHADOWED.format(reason=verdict.reason))
    rule = verdict.rule
    assert rule is not None  # only the default deny has no rule
    changes: dict[str, Any] = {"args": args, "args_hash": args_hash(args)}
    if rule.index != request.rule_index:
        changes.update(rule_index=rule.index, rule=rule.describe())
        if verdict.effect == "approve":
            # A new rule, a new request: its approvals, its group, its own time to decide.
            changes.update(
                required_approvals=rule.approvals,
                approver_group=rule.approvers,
                on_timeout=rule.on_timeout,
                due_at=timezone.now() + timedelta(seconds=rule.timeout_seconds),
                escalation_level=0,
                escalated_to="",
            )
            # Its deciders may be other people: they are told as for a new request.
            notify_on_commit(event="approval.requested", request_id=request.pk)
    ApprovalRequest.objects.filter(pk=request.pk).update(**changes)
    for field, value in changes.items():
        setattr(request, field, value)
    return verdict.effect == "allow"


def _rule_name(request: ApprovalRequest) -> str:
    rule = request.rule or {}
    group = f", decided by {request.approver_group}" if request.approver_group else ""
    return f"rule {int(rule.get('index', 0)) + 1} ({rule.get('tool', request.tool)}{group})"


def approvals_cancel_for_runs(*, run_ids: list[int], reason: str, actor: Actor) -> None:
    # The caller holds the runs; every request is locked before the first audit event.
    # On Postgres the ids go as one array (a halt passes hundreds).
    runs: Any = (
        RawSQL("SELECT unnest(%s::bigint[])", [run_ids])
        if connection.vendor == "postgresql"
        else run_ids
    )
    pending = ApprovalRequest.objects.filter(
        run_id__in=runs, status=ApprovalRequest.Status.PENDING
    ).select_for_update(of=("self",), no_key=True)
    requests = list(pending.select_related("agent", "run").order_by("pk"))
    if not requests:
        return
    for request in requests:
        if request.agent.kind == Agent.Kind.REMOTE:
            ring_run(request.run_id)  # a waiting poll hears of the cancel
    # One statement for the requests and one for their events, however many there are.
    ApprovalRequest.objects.filter(pk__in=[r.pk for r in requests]).update(
        status=ApprovalRequest.Status.CANCELLED, decided_at=timezone.now()
    )
    audit_append_many(
        [
            record_content(
                verb=Verb.APPROVAL_CANCELLED,
                actor=actor,
                subject_type="approval",
                subject_id=request.pk,
                agent=request.agent,
                run=request.run,
                payload={"reason": reason},
            )
            for request in requests
        ]
    )


def approvals_expire() -> int:
    """Requests past their due time escalate to the rule's next approver group, or, with
    no group left, fail closed: rejected as expired. Returns how many moved."""
    count = 0
    due = ApprovalRequest.objects.filter(
        status=ApprovalRequest.Status.PENDING, due_at__lt=timezone.now()
    )
    for request_id in due.values_list("pk", flat=True)[:500]:
        # One durable transaction per request: each is settled and audited on its own.
        with transaction.atomic(durable=True):
            request = _lock_request(request_id)
            if request.status != ApprovalRequest.Status.PENDING:
                continue
            groups = (request.rule or {}).get("escalate_to", [])
            if request.on_timeout == "escalate" and request.escalation_level < len(groups):
                _escalate(request, groups[request.escalation_level])
            else:
                audit_record(
                    verb=Verb.APPROVAL_EXPIRED,
                    actor=SYSTEM,
                    subject_type="approval",
                    subject_id=request.pk,
                    agent=request.agent,
                    run=request.run,
                    payload={"due_at": request.due_at},
                )
                notify_on_commit(event="approval.expired", request_id=request.pk)
                _release(
                    request,
                    status=ApprovalRequest.Status.EXPIRED,
                    action_status=Action.Status.REJECTED,
                    args=request.args,
                    error="expired: nobody decided in time",
                )
            count += 1
    return count


def _escalate(request: ApprovalRequest, group: str) -> None:
    timeout = (request.rule or {}).get("timeout", DEFAULT_APPROVAL_TIMEOUT)
    due_at = timezone.now() + timedelta(seconds=timeout)
    ApprovalRequest.objects.filter(pk=request.pk).update(
        escalation_level=request.escalation_level + 1, escalated_to=group, due_at=due_at
    )
    audit_record(
        verb=Verb.APPROVAL_ESCALATED,
        actor=SYSTEM,
        subject_type="approval",
        subject_id=request.pk,
        agent=request.agent,
        run=request.run,
        payload={"to": group, "level": request.escalation_level + 1, "due_at": due_at},
    )
    notify_on_commit(event="approval.escalated", request_id=request.pk)


class Port:
    """The approvals app as the gateway sees it (agents.approval_port)."""

    def open(self, *, action: Action, tool: Tool, rule: Rule | None) -> ApprovalRequest:
        return approval_request_open(action=action, tool=tool, rule=rule)

    def cancel_for_runs(self, *, run_ids: list[int], reason: str, actor: Actor) -> None:
        approvals_cancel_for_runs(run_ids=run_ids, reason=reason, actor=actor)

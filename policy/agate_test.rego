package agate_test

import data.agate

# A member of tenant acme with no scopes, acting in acme.
member := {
	"principal": {"tenant": "acme", "subject": "u-1", "via": "jwt"},
	"tenant": "acme",
	"resource": {"type": "session", "id": "6f1c2d3e-0000-4000-8000-000000000001"},
	"context": {},
	"usage": {"tokens_spent": 1200, "tokens_limit": 100000},
}

with_scopes(scopes) := object.union(member, {"principal": object.union(member.principal, {"scopes": scopes})})

act(x, action) := object.union(x, {"action": action})

model_use(name, routing) := object.union(act(member, "model.use"), {"context": {"model": name, "routing": routing}})

# set(x, key, value) is x with key's value replaced whole (object.union merges deeply).
set(x, key, value) := object.union(object.remove(x, [key]), {key: value})

tool_exec(x, context) := object.union(act(x, "tool.execute"), {"context": context})

# --- fail closed -----------------------------------------------------------------------

test_unknown_action_denied if {
	agate.decision == {"allow": false, "reason": "unknown action \"session.delete\""} with input as act(member, "session.delete")
}

test_missing_action_denied if {
	not agate.decision.allow with input as member
	agate.decision.reason == "no action in the input" with input as member
}

test_non_string_action_denied if {
	agate.decision == {"allow": false, "reason": "no action in the input"} with input as act(member, 42)
}

test_empty_input_denied if {
	not agate.decision.allow with input as {}
}

test_action_prefix_is_not_admin if {
	# "admin" alone and "administer" are unknown actions, not admin.*.
	agate.decision.reason == "unknown action \"admin\"" with input as act(with_scopes(["admin"]), "admin")
	agate.decision.reason == "unknown action \"administer\"" with input as act(with_scopes(["admin"]), "administer")
}

# --- conversation.send -----------------------------------------------------------------

test_send_in_own_tenant_allowed if {
	agate.decision.allow with input as act(member, "conversation.send")
}

test_send_to_other_tenant_denied if {
	x := object.union(act(member, "conversation.send"), {"tenant": "globex"})
	agate.decision == {"allow": false, "reason": "cross-tenant"} with input as x
}

test_send_without_principal_tenant_denied if {
	x := set(act(member, "conversation.send"), "principal", {"subject": "u-1"})
	agate.decision == {"allow": false, "reason": "cross-tenant"} with input as x
}

test_send_with_empty_tenants_denied if {
	x := object.union(act(member, "conversation.send"), {"tenant": "", "principal": {"tenant": ""}})
	agate.decision.reason == "cross-tenant" with input as x
}

test_send_over_budget_denied if {
	x := object.union(act(member, "conversation.send"), {"usage": {"tokens_spent": 100000, "tokens_limit": 100000}})
	agate.decision == {"allow": false, "reason": "budget_exceeded"} with input as x
}

test_send_under_budget_allowed if {
	x := object.union(act(member, "conversation.send"), {"usage": {"tokens_spent": 99999, "tokens_limit": 100000}})
	agate.decision.allow with input as x
}

test_send_without_limit_allowed if {
	# tokens_limit 0 or absent: no budget.
	agate.decision.allow with input as object.union(act(member, "conversation.send"), {"usage": {"tokens_spent": 5, "tokens_limit": 0}})
	agate.decision.allow with input as set(act(member, "conversation.send"), "usage", {"tokens_spent": 5})
	agate.decision.allow with input as set(act(member, "conversation.send"), "usage", {})
	agate.decision.allow with input as set(act(member, "conversation.send"), "usage", null)
	agate.decision.allow with input as object.remove(act(member, "conversation.send"), ["usage"])
}

test_send_cross_tenant_reported_before_budget if {
	# Another tenant's budget state is not the caller's business.
	x := object.union(act(member, "conversation.send"), {"tenant": "globex", "usage": {"tokens_spent": 9, "tokens_limit": 1}})
	agate.decision.reason == "cross-tenant" with input as x
}

# --- model.use -------------------------------------------------------------------------

test_model_without_routing_allowed if {
	agate.decision.allow with input as model_use("openai/gpt-4.1-mini", {})
	agate.decision.allow with input as object.union(act(member, "model.use"), {"context": {"model": "openai/gpt-4.1-mini"}})
	agate.decision.allow with input as model_use("openai/gpt-4.1-mini", {"allow": [], "deny": []})
	agate.decision.allow with input as model_use("openai/gpt-4.1-mini", {"allow": null, "deny": null})
}

test_model_in_allow_list_allowed if {
	d := agate.decision with input as model_use("openai/gpt-4.1-mini", {"allow": ["anthropic/*", "openai/*"]})
	d == {"allow": true, "reason": "model \"openai/gpt-4.1-mini\" is allowed by routing.allow pattern \"openai/*\""}
}

test_model_prefix_pattern if {
	agate.decision.allow with input as model_use("gpt-4.1-mini", {"allow": ["gpt-4.1*"]})
	not agate.decision.allow with input as model_use("gpt-4o", {"allow": ["gpt-4.1*"]})
}

test_model_outside_allow_list_denied if {
	d := agate.decision with input as model_use("anthropic/claude-sonnet-4", {"allow": ["openai/*"]})
	d == {"allow": false, "reason": "model \"anthropic/claude-sonnet-4\" matches no routing.allow pattern [\"openai/*\"]"}
}

test_model_in_deny_list_denied if {
	d := agate.decision with input as model_use("openai/o3-pro", {"deny": ["openai/o3*"]})
	d == {"allow": false, "reason": "model \"openai/o3-pro\" is denied by routing.deny pattern \"openai/o3*\""}
}

test_model_deny_wins_over_allow if {
	d := agate.decision with input as model_use("openai/o3-pro", {"allow": ["openai/*"], "deny": ["*-pro", "openai/o3*"]})
	d == {"allow": false, "reason": "model \"openai/o3-pro\" is denied by routing.deny pattern \"*-pro\""}
}

test_model_lone_string_pattern if {
	not agate.decision.allow with input as model_use("openai/o3", {"deny": "openai/*"})
	agate.decision.allow with input as model_use("openai/o3", {"allow": "openai/*"})
}

test_model_missing_denied if {
	agate.decision == {"allow": false, "reason": "no model in the request"} with input as act(member, "model.use")
	agate.decision.reason == "no model in the request" with input as model_use("", {})
	agate.decision.reason == "no model in the request" with input as model_use(7, {})
}

test_model_over_budget_denied if {
	x := object.union(model_use("openai/gpt-4.1", {"allow": ["openai/*"]}), {"usage": {"tokens_spent": 2000, "tokens_limit": 1000}})
	agate.decision == {"allow": false, "reason": "budget_exceeded"} with input as x
}

test_model_routing_reported_before_budget if {
	x := object.union(model_use("openai/o3", {"deny": ["openai/o3"]}), {"usage": {"tokens_spent": 2000, "tokens_limit": 1000}})
	startswith(agate.decision.reason, "model \"openai/o3\" is denied") with input as x
}

# --- tool.execute ----------------------------------------------------------------------

test_tool_allowed if {
	d := agate.decision with input as tool_exec(member, {"tool": "web_search", "tool_risk": "low", "tools_deny": ["shell"]})
	d == {"allow": true, "reason": "tool \"web_search\" is allowed"}
}

test_tool_in_deny_list_denied if {
	d := agate.decision with input as tool_exec(member, {"tool": "shell", "tools_deny": ["shell", "fs_write"]})
	d == {"allow": false, "reason": "tool \"shell\" is in tools_deny"}
}

test_tool_deny_list_wins_over_scope if {
	x := tool_exec(with_scopes(["tools:high", "admin"]), {"tool": "shell", "tool_risk": "high", "tools_deny": ["shell"]})
	agate.decision.reason == "tool \"shell\" is in tools_deny" with input as x
}

test_high_risk_tool_without_scope_denied if {
	d := agate.decision with input as tool_exec(with_scopes(["admin"]), {"tool": "shell", "tool_risk": "high"})
	d == {"allow": false, "reason": "tool \"shell\" is high risk and needs scope \"tools:high\""}
}

test_high_risk_tool_with_scope_allowed if {
	agate.decision.allow with input as tool_exec(with_scopes(["tools:high"]), {"tool": "shell", "tool_risk": "high"})
}

test_tool_missing_denied if {
	agate.decision == {"allow": false, "reason": "no tool in the request"} with input as tool_exec(member, {"tool_risk": "low"})
}

# --- settings.update and admin.* ---------------------------------------------------------

test_settings_update_needs_admin if {
	agate.decision == {"allow": false, "reason": "action \"settings.update\" needs scope \"admin\""} with input as act(member, "settings.update")
	agate.decision == {"allow": false, "reason": "action \"settings.update\" needs scope \"admin\""} with input as act(with_scopes(["tools:high"]), "settings.update")
	agate.decision == {"allow": true, "reason": "scope \"admin\""} with input as act(with_scopes(["admin"]), "settings.update")
}

test_admin_actions_need_admin if {
	every action in ["admin.keys", "admin.dlq", "admin.breakers", "admin.anything.else"] {
		agate.decision.allow with input as act(with_scopes(["admin"]), action)
		agate.decision.reason == sprintf("action %q needs scope \"admin\"", [action]) with input as act(member, action)
	}
}

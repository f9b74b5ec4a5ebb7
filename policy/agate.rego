# Package agate holds the gateway's policy decisions. The gateway asks for
# data.agate.decision with input {principal, tenant, action, resource, context, usage}
# and gets {"allow": bool, "reason": string}.
#
# Every rule fails closed: an action the package does not name, or an input that lacks
# what a rule needs (a tenant, a model, a tool, a scope), is refused with a reason.
# Checks run in a fixed order per action and the first refusal is the reason: lasting
# refusals (tenant, routing) come before budget_exceeded, which passes with the day.
package agate

# decision is the answer for input.action. The default answers an input without an
# action (or one that is not a string), so the query is never undefined.
default decision := {"allow": false, "reason": "no action in the input"}

decision := send if input.action == "conversation.send"

decision := model if input.action == "model.use"

decision := tool if input.action == "tool.execute"

decision := admin if input.action == "settings.update"

decision := admin if startswith(input.action, "admin.")

decision := deny(sprintf("unknown action %q", [input.action])) if {
	is_string(input.action)
	not known_action
}

known_action if input.action in {"conversation.send", "model.use", "tool.execute", "settings.update"}

known_action if startswith(input.action, "admin.")

deny(reason) := {"allow": false, "reason": reason}

permit(reason) := {"allow": true, "reason": reason}

# conversation.send: a principal writes only in its own tenant, and only within budget.
send := deny("cross-tenant") if {
	not same_tenant
} else := deny("budget_exceeded") if {
	over_budget
} else := permit("member of the tenant")

same_tenant if {
	input.tenant != ""
	input.principal.tenant == input.tenant
}

# over_budget is the policy view of the tenant's token budget: a limit is set and spent.
# The atomic reservation that keeps concurrent calls under it happens elsewhere.
over_budget if {
	input.usage.tokens_limit > 0
	input.usage.tokens_spent >= input.usage.tokens_limit
}

# model.use: input.context.model against the tenant's routing rules. routing.deny wins over
# routing.allow; an empty or missing routing.allow allows every model.
model := deny("no model in the request") if {
	not requested_model
} else := deny(sprintf("model %q is denied by routing.deny pattern %q", [input.context.model, p])) if {
	p := first_match(routing("deny"), input.context.model)
} else := deny(sprintf("model %q matches no routing.allow pattern %v", [input.context.model, routing("allow")])) if {
	count(routing("allow")) > 0
	not first_match(routing("allow"), input.context.model)
} else := deny("budget_exceeded") if {
	over_budget
} else := permit(sprintf("model %q is allowed by routing.allow pattern %q", [input.context.model, p])) if {
	p := first_match(routing("allow"), input.context.model)
} else := permit(sprintf("model %q is allowed: no routing.allow list", [input.context.model]))

requested_model if {
	is_string(input.context.model)
	input.context.model != ""
}

# routing(kind) is the list of patterns of input.context.routing[kind]: [] when missing or
# null, and a lone string taken as a list of one, so that a slip in the settings does not
# drop a deny rule.
routing(kind) := [ps] if {
	ps := object.get(input, ["context", "routing", kind], null)
	is_string(ps)
} else := ps if {
	ps := object.get(input, ["context", "routing", kind], null)
	ps != null
} else := []

# first_match is the first pattern of patterns that matches name; glob.match with no
# delimiters, so "*" spans "/" and "." ("openai/*" matches "openai/gpt-4.1-mini").
first_match(patterns, name) := [p |
	some p in patterns
	glob.match(p, null, name)
][0]

# tool.execute: any tool but those the tenant denies; a high-risk tool needs scope tools:high.
tool := deny("no tool in the request") if {
	not requested_tool
} else := deny(sprintf("tool %q is in tools_deny", [input.context.tool])) if {
	input.context.tool in object.get(input, ["context", "tools_deny"], [])
} else := deny(sprintf("tool %q is high risk and needs scope \"tools:high\"", [input.context.tool])) if {
	input.context.tool_risk == "high"
	not has_scope("tools:high")
} else := permit(sprintf("tool %q is allowed", [input.context.tool]))

requested_tool if {
	is_string(input.context.tool)
	input.context.tool != ""
}

# settings.update and admin.*: the tenant's administrators, or the gateway's operators
# (the API lets only operators reach the routes that show every tenant's state).
admin := permit("scope \"admin\"") if {
	has_scope("admin")
} else := permit("scope \"operator\"") if {
	has_scope("operator")
} else := deny(sprintf("action %q needs scope \"admin\"", [input.action]))

has_scope(s) if s in input.principal.scopes

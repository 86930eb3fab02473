-- Argo CD health check for agentrollout.io/AgentRollout.
-- Add under resource.customizations.health.agentrollout.io_AgentRollout in argocd-cm.
local hs = {status = "Progressing", message = "Waiting for the operator"}
if obj.status == nil or obj.status.phase == nil then
  return hs
end
local phase = obj.status.phase
hs.message = obj.status.message or phase
if phase == "Promoted" then
  hs.status = "Healthy"
elseif phase == "Paused" then
  hs.status = "Suspended"
elseif phase == "RolledBack" or phase == "Failed" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
return hs

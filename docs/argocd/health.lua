-- Argo CD health check for agentrollout.io/AgentRollout.
-- Add under resource.customizations.health.agentrollout.io_AgentRollout in argocd-cm.
-- Runs under Argo CD's Lua 5.1 (gopher-lua); tests/test_argocd_lua.py runs it with lua5.1.
local hs = {status = "Progressing", message = "Waiting for the operator"}
if obj.status == nil or obj.status.phase == nil then
  return hs
end
-- A status written for an older spec says nothing about the current one (a new candidate, new
-- steps or gates): until the operator has observed this generation, the last phase is not news.
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.message = "waiting for the operator to observe generation " .. tostring(generation)
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

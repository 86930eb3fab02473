from agent_rollout.comparator.app import main

main()

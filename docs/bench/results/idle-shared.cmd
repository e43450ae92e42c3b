idle --connections 100000 --sessions-per-connection 10 --duration 10 --open-timeout 120

"""Load for the kf-api example: `locust -f packaging/loadtest/locustfile.py --host http://127.0.0.1:8080`.

Mostly the cheap root endpoint, some slow requests, and CPU-burning ones that make the HPA
(or drover's local autoscaler) add capacity.
"""
from locust import HttpUser, between, task


class ApiUser(HttpUser):
    wait_time = between(0.05, 0.2)

    @task(10)
    def root(self):
        self.client.get("/")

    @task(2)
    def slow(self):
        self.client.get("/slow?seconds=0.5", name="/slow")

    @task(1)
    def burn(self):
        self.client.get("/burn?ms=50", name="/burn")

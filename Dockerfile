# One image for every nurture process: web (gunicorn), worker and scheduler.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY nurture ./nurture
RUN pip install --no-cache-dir -e .
COPY . .
ENV NURTURE_ENV=production
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "wsgi:app"]
